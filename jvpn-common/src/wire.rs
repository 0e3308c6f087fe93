//! The 20-byte jvpn header that starts every UDP payload (DESIGN §3, docs/protocol.md).
//!
//! All integers are big-endian on the wire. [`WireHeader`] has alignment 1 so the XDP
//! program can view packet memory through it after a single bounds check.

/// Protocol version carried in byte 0.
pub const VERSION: u8 = 1;

/// Length of the common header.
pub const HEADER_LEN: usize = 20;

/// Length of the Poly1305 tag that ends every DATA packet.
pub const TAG_LEN: usize = 16;

/// Smallest well-formed DATA payload: header and tag around an empty plaintext.
pub const MIN_DATA_LEN: usize = HEADER_LEN + TAG_LEN;

/// Packet type codes (byte 1).
pub mod msg_type {
    pub const DATA: u8 = 0x01;
    pub const HELLO: u8 = 0x10;
    pub const WELCOME: u8 = 0x11;
    pub const CONFIRM: u8 = 0x12;
    pub const ESTABLISHED: u8 = 0x13;
    pub const REATTACH_REQUEST: u8 = 0x20;
    pub const REATTACH_CHALLENGE: u8 = 0x21;
    pub const REATTACH_CONFIRM: u8 = 0x22;
    pub const REATTACH_ACK: u8 = 0x23;
    pub const REATTACH_DENIED: u8 = 0x24;
    pub const KEEPALIVE: u8 = 0x30;
    pub const KEEPALIVE_ACK: u8 = 0x31;
    pub const CLOSE: u8 = 0x40;
    /// Gateway → client, session 0: a source-address cookie for a HELLO sent while
    /// the gateway is under load (docs/protocol.md, "Under load: cookies").
    pub const COOKIE: u8 = 0x14;
    /// Gateway → client, session 0: the gateway's time, signed, for a validly signed
    /// HELLO stamped outside the freshness window (docs/protocol.md, "Freshness").
    pub const TIME: u8 = 0x15;
}

/// HELLO without a cookie: header, `eph_pub[32] ‖ id_pub[32] ‖ ts_ms u64 ‖ nonce[16] ‖ sig[64]`.
pub const HELLO_LEN: usize = HEADER_LEN + 32 + 32 + 8 + 16 + 64;
/// HELLO carrying a cookie: the same bytes followed by `cookie[16]` (not signed).
pub const HELLO_COOKIE_LEN: usize = HELLO_LEN + COOKIE_LEN;
/// Offset of the HELLO's nonce in its payload (the COOKIE and TIME replies echo it).
pub const HELLO_NONCE_OFF: usize = HEADER_LEN + 32 + 32 + 8;
/// Offset of the cookie in a [`HELLO_COOKIE_LEN`] HELLO.
pub const HELLO_COOKIE_OFF: usize = HELLO_LEN;
/// A cookie: `seq u32 ‖ 0[4] ‖ mac[8]`.
pub const COOKIE_LEN: usize = 16;
/// COOKIE message: header, `nonce_echo[16] ‖ cookie[16]`.
pub const COOKIE_MSG_LEN: usize = HEADER_LEN + 16 + COOKIE_LEN;
/// TIME message: header, `gateway_ms u64 ‖ nonce_echo[16] ‖ sig[64]`.
pub const TIME_MSG_LEN: usize = HEADER_LEN + 8 + 16 + 64;

// The reply-size rule: nothing sent before validation is larger than what it answers.
const _: () = assert!(COOKIE_MSG_LEN < HELLO_LEN && TIME_MSG_LEN < HELLO_LEN);

/// What a packet is, as far as the data plane cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Encrypted tunnel traffic: relayed in XDP.
    Data,
    /// HELLO: the only message allowed without a session; goes to the controller.
    Hello,
    /// Any other known control message: goes to the controller if the session exists.
    Control,
    /// COOKIE or TIME: sessionless replies the gateway sends; a gateway receiving one
    /// drops it.
    Reply,
}

/// Why a payload is not a valid jvpn header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// Fewer than [`HEADER_LEN`] bytes (or a DATA packet shorter than header + tag).
    Truncated,
    /// Byte 0 is not [`VERSION`].
    BadVersion,
    /// Byte 1 is not a known type.
    UnknownType,
    /// Session id 0 outside HELLO and the sessionless replies, or a nonzero one in them.
    BadSessionId,
}

/// The common header as it lies in memory. Alignment 1: safe to overlay on packet bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WireHeader {
    pub version: u8,
    pub msg_type: u8,
    pub flags: u8,
    pub reserved: u8,
    pub session_id: [u8; 8],
    pub counter: [u8; 8],
}

const _: () = assert!(core::mem::size_of::<WireHeader>() == HEADER_LEN);
const _: () = assert!(core::mem::align_of::<WireHeader>() == 1);

impl WireHeader {
    pub const fn new(msg_type: u8, session_id: u64, counter: u64) -> Self {
        Self {
            version: VERSION,
            msg_type,
            flags: 0,
            reserved: 0,
            session_id: session_id.to_be_bytes(),
            counter: counter.to_be_bytes(),
        }
    }

    #[inline(always)]
    pub const fn session_id(&self) -> u64 {
        u64::from_be_bytes(self.session_id)
    }

    #[inline(always)]
    pub const fn counter(&self) -> u64 {
        u64::from_be_bytes(self.counter)
    }

    /// Checks the header of a payload `payload_len` bytes long and says what it is.
    ///
    /// This is the one classification rule of the protocol; the XDP program and the
    /// controller both call it, so they can never disagree on what is malformed.
    #[inline(always)]
    pub const fn classify(&self, payload_len: usize) -> Result<Kind, HeaderError> {
        if payload_len < HEADER_LEN {
            return Err(HeaderError::Truncated);
        }
        if self.version != VERSION {
            return Err(HeaderError::BadVersion);
        }
        let kind = match self.msg_type {
            msg_type::DATA => Kind::Data,
            msg_type::HELLO => Kind::Hello,
            msg_type::COOKIE | msg_type::TIME => Kind::Reply,
            msg_type::WELCOME
            | msg_type::CONFIRM
            | msg_type::ESTABLISHED
            | msg_type::REATTACH_REQUEST
            | msg_type::REATTACH_CHALLENGE
            | msg_type::REATTACH_CONFIRM
            | msg_type::REATTACH_ACK
            | msg_type::REATTACH_DENIED
            | msg_type::KEEPALIVE
            | msg_type::KEEPALIVE_ACK
            | msg_type::CLOSE => Kind::Control,
            _ => return Err(HeaderError::UnknownType),
        };
        let sid_is_zero = u64::from_be_bytes(self.session_id) == 0;
        match kind {
            Kind::Hello | Kind::Reply if !sid_is_zero => Err(HeaderError::BadSessionId),
            Kind::Data | Kind::Control if sid_is_zero => Err(HeaderError::BadSessionId),
            Kind::Data if payload_len < MIN_DATA_LEN => Err(HeaderError::Truncated),
            _ => Ok(kind),
        }
    }

    /// Reads a header from the start of `buf` (userspace convenience).
    pub fn parse(buf: &[u8]) -> Result<(Self, Kind), HeaderError> {
        let Some(bytes) = buf.first_chunk::<HEADER_LEN>() else {
            return Err(HeaderError::Truncated);
        };
        let header = Self::from_bytes(bytes);
        let kind = header.classify(buf.len())?;
        Ok((header, kind))
    }

    pub const fn from_bytes(b: &[u8; HEADER_LEN]) -> Self {
        let mut session_id = [0u8; 8];
        let mut counter = [0u8; 8];
        let mut i = 0;
        while i < 8 {
            session_id[i] = b[4 + i];
            counter[i] = b[12 + i];
            i += 1;
        }
        Self {
            version: b[0],
            msg_type: b[1],
            flags: b[2],
            reserved: b[3],
            session_id,
            counter,
        }
    }

    pub const fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0] = self.version;
        b[1] = self.msg_type;
        b[2] = self.flags;
        b[3] = self.reserved;
        let mut i = 0;
        while i < 8 {
            b[4 + i] = self.session_id[i];
            b[12 + i] = self.counter[i];
            i += 1;
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(t: u8, sid: u64) -> [u8; HEADER_LEN] {
        WireHeader::new(t, sid, 7).to_bytes()
    }

    #[test]
    fn roundtrip() {
        let h = WireHeader::new(msg_type::DATA, 0x0102_0304_0506_0708, 42);
        let b = h.to_bytes();
        assert_eq!(&b[..4], &[1, 1, 0, 0]);
        assert_eq!(&b[4..12], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&b[12..], &42u64.to_be_bytes());
        assert_eq!(WireHeader::from_bytes(&b), h);
        assert_eq!(h.session_id(), 0x0102_0304_0506_0708);
        assert_eq!(h.counter(), 42);
    }

    #[test]
    fn every_truncation_is_rejected() {
        let mut buf = [0u8; MIN_DATA_LEN];
        buf[..HEADER_LEN].copy_from_slice(&bytes(msg_type::DATA, 9));
        for len in 0..MIN_DATA_LEN {
            assert_eq!(
                WireHeader::parse(&buf[..len]),
                Err(HeaderError::Truncated),
                "len {len}"
            );
        }
        assert_eq!(WireHeader::parse(&buf).map(|r| r.1), Ok(Kind::Data));
    }

    #[test]
    fn control_needs_only_header() {
        let b = bytes(msg_type::KEEPALIVE, 9);
        assert_eq!(WireHeader::parse(&b).map(|r| r.1), Ok(Kind::Control));
        assert_eq!(WireHeader::parse(&b[..19]), Err(HeaderError::Truncated));
    }

    #[test]
    fn rejects_bad_version_type_and_ids() {
        let mut b = bytes(msg_type::HELLO, 0);
        assert_eq!(WireHeader::parse(&b).map(|r| r.1), Ok(Kind::Hello));
        b[0] = 2;
        assert_eq!(WireHeader::parse(&b), Err(HeaderError::BadVersion));
        assert_eq!(
            WireHeader::parse(&bytes(0x7f, 9)),
            Err(HeaderError::UnknownType)
        );
        assert_eq!(
            WireHeader::parse(&bytes(msg_type::HELLO, 9)),
            Err(HeaderError::BadSessionId)
        );
        assert_eq!(
            WireHeader::parse(&bytes(msg_type::CLOSE, 0)),
            Err(HeaderError::BadSessionId)
        );
    }

    #[test]
    fn every_type_byte_is_classified_consistently() {
        let known = [
            0x01u8, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x20, 0x21, 0x22, 0x23, 0x24, 0x30, 0x31,
            0x40,
        ];
        for t in 0..=255u8 {
            let sessionless = [msg_type::HELLO, msg_type::COOKIE, msg_type::TIME];
            let sid = if sessionless.contains(&t) { 0 } else { 5 };
            let mut buf = [0u8; MIN_DATA_LEN];
            buf[..HEADER_LEN].copy_from_slice(&bytes(t, sid));
            let r = WireHeader::parse(&buf);
            assert_eq!(r.is_ok(), known.contains(&t), "type {t:#x}");
        }
    }
}
