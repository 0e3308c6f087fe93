//! The template frame the generator sends: Ethernet, IPv4 or IPv6, UDP, and a jvpn
//! DATA packet (header, stand-in ciphertext, stand-in tag), every checksum valid.

use std::net::{IpAddr, SocketAddr};

use jvpn_common::{
    bench::payload_offset,
    csum,
    headers::{ETH_P_IPV4, ETH_P_IPV6, EthHdr, IPPROTO_UDP, Ipv4Hdr, Ipv6Hdr, UdpHdr, Wire as _},
    maps::{AF_INET, AF_INET6},
    wire::{HEADER_LEN, MIN_DATA_LEN, WireHeader, msg_type},
};

use super::BenchError;

/// TTL / hop limit of generated packets.
pub const TTL: u8 = 64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameSpec {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// UDP payload bytes: the jvpn header, the ciphertext and the 16-byte tag.
    pub payload_len: usize,
    /// Session id of the template (the generator rewrites it per frame).
    pub session_id: u64,
}

impl FrameSpec {
    /// [`AF_INET`] or [`AF_INET6`] (as in the shared map types).
    pub fn family(&self) -> u8 {
        if self.src.is_ipv4() {
            AF_INET
        } else {
            AF_INET6
        }
    }

    /// Bytes of the IP packet (IP header, UDP header, payload): what the MTU limits.
    pub fn ip_len(&self) -> usize {
        self.frame_len() - jvpn_common::headers::ETH_LEN
    }

    pub fn frame_len(&self) -> usize {
        payload_offset(self.family()) + self.payload_len
    }

    /// Checks the parts that do not depend on an interface.
    pub fn validate(&self) -> Result<(), BenchError> {
        if self.src.is_ipv4() != self.dst.is_ipv4() {
            return Err(BenchError::FamilyMismatch {
                src: self.src.ip(),
                dst: self.dst.ip(),
            });
        }
        if self.payload_len < MIN_DATA_LEN {
            return Err(BenchError::PayloadTooSmall {
                size: self.payload_len,
                min: MIN_DATA_LEN,
            });
        }
        if self.ip_len() > usize::from(u16::MAX) {
            return Err(BenchError::PayloadTooLarge {
                size: self.payload_len,
                ip_len: self.ip_len(),
                iface: "any interface".into(),
                mtu: u32::from(u16::MAX),
            });
        }
        if self.session_id == 0 {
            return Err(BenchError::BadSessions(
                "session id 0 is reserved for HELLO".into(),
            ));
        }
        Ok(())
    }

    /// The frame, with a valid IPv4 header checksum and a valid UDP checksum.
    pub fn build(&self) -> Result<Vec<u8>, BenchError> {
        self.validate()?;
        self.frame_with(&self.payload())
    }

    /// The frame carrying `payload` as its UDP payload instead of a DATA packet (any
    /// jvpn message: a HELLO, a REATTACH_REQUEST), with valid checksums. `payload_len`
    /// and `session_id` are not used.
    pub fn build_with_payload(&self, payload: &[u8]) -> Result<Vec<u8>, BenchError> {
        if self.src.is_ipv4() != self.dst.is_ipv4() {
            return Err(BenchError::FamilyMismatch {
                src: self.src.ip(),
                dst: self.dst.ip(),
            });
        }
        if payload.len() < HEADER_LEN {
            return Err(BenchError::PayloadTooSmall {
                size: payload.len(),
                min: HEADER_LEN,
            });
        }
        let spec = Self {
            payload_len: payload.len(),
            ..self.clone()
        };
        if spec.ip_len() > usize::from(u16::MAX) {
            return Err(BenchError::PayloadTooLarge {
                size: payload.len(),
                ip_len: spec.ip_len(),
                iface: "any interface".into(),
                mtu: u32::from(u16::MAX),
            });
        }
        spec.frame_with(payload)
    }

    fn frame_with(&self, payload: &[u8]) -> Result<Vec<u8>, BenchError> {
        let udp_len = (jvpn_common::headers::UDP_LEN + payload.len()) as u16;
        let mut udp_bytes = Vec::with_capacity(usize::from(udp_len));
        udp_bytes.extend_from_slice(
            UdpHdr {
                sport: self.src.port().to_be_bytes(),
                dport: self.dst.port().to_be_bytes(),
                len: udp_len.to_be_bytes(),
                check: [0, 0],
            }
            .as_bytes(),
        );
        udp_bytes.extend_from_slice(payload);

        let mut frame = Vec::with_capacity(self.frame_len());
        let (ethertype, src, dst): (u16, Vec<u8>, Vec<u8>) = match (self.src.ip(), self.dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => (ETH_P_IPV4, s.octets().into(), d.octets().into()),
            (IpAddr::V6(s), IpAddr::V6(d)) => (ETH_P_IPV6, s.octets().into(), d.octets().into()),
            _ => unreachable!("validated above"),
        };
        let check = csum::udp_full(&src, &dst, &udp_bytes);
        udp_bytes[6..8].copy_from_slice(&check.to_be_bytes());
        frame.extend_from_slice(
            EthHdr {
                dst: self.dst_mac,
                src: self.src_mac,
                ethertype: ethertype.to_be_bytes(),
            }
            .as_bytes(),
        );
        match (self.src.ip(), self.dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let mut ip = Ipv4Hdr {
                    version_ihl: 0x45,
                    tos: 0,
                    total_len: ((jvpn_common::headers::IPV4_LEN as u16) + udp_len).to_be_bytes(),
                    id: [0, 0],
                    // Don't fragment: the path under test never fragments either.
                    frag_off: 0x4000u16.to_be_bytes(),
                    ttl: TTL,
                    protocol: IPPROTO_UDP,
                    check: [0, 0],
                    src: s.octets(),
                    dst: d.octets(),
                };
                let hdr: [u8; 20] = ip.as_bytes().try_into().expect("20-byte header");
                ip.check = csum::ipv4_header(&hdr).to_be_bytes();
                frame.extend_from_slice(ip.as_bytes());
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => frame.extend_from_slice(
                Ipv6Hdr {
                    vtc_flow: [0x60, 0, 0, 0],
                    payload_len: udp_len.to_be_bytes(),
                    next_header: IPPROTO_UDP,
                    hop_limit: TTL,
                    src: s.octets(),
                    dst: d.octets(),
                }
                .as_bytes(),
            ),
            _ => unreachable!("validated above"),
        }
        frame.extend_from_slice(&udp_bytes);
        debug_assert_eq!(frame.len(), self.frame_len());
        Ok(frame)
    }

    /// The jvpn DATA packet: header (counter 0), then bytes that look like
    /// ciphertext and tag (a fixed pseudo-random pattern; nothing is encrypted).
    fn payload(&self) -> Vec<u8> {
        let mut p = Vec::with_capacity(self.payload_len);
        p.extend_from_slice(&WireHeader::new(msg_type::DATA, self.session_id, 0).to_bytes());
        let mut x: u32 = 0x9e37_79b9;
        p.extend((HEADER_LEN..self.payload_len).map(|_| {
            // xorshift32
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        }));
        p
    }
}

#[cfg(test)]
mod tests {
    use jvpn_common::{relay, wire::Kind};

    use super::*;

    fn spec(src: &str, dst: &str, payload_len: usize) -> FrameSpec {
        FrameSpec {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            payload_len,
            session_id: 0x1234,
        }
    }

    #[test]
    fn frames_parse_as_data_with_valid_checksums() {
        for (s, d) in [
            ("10.0.0.1:40000", "10.0.0.2:51820"),
            ("[fd00::1]:40000", "[fd00::2]:51820"),
        ] {
            for len in [MIN_DATA_LEN, 37, 64, 1400] {
                let sp = spec(s, d, len);
                let f = sp.build().unwrap();
                assert_eq!(f.len(), sp.frame_len());
                let p = relay::parse(&f[..], 51820).expect("parses");
                assert_eq!(
                    (p.kind, p.session_id, p.payload_len),
                    (Kind::Data, 0x1234, len)
                );
                // Recompute the UDP checksum over the datagram as sent: it must sum to
                // all ones with the checksum in place.
                let l4 = payload_offset(sp.family()) - 8;
                let (src, dst) = if sp.family() == AF_INET {
                    (&f[26..30], &f[30..34])
                } else {
                    (&f[22..38], &f[38..54])
                };
                let mut acc = csum::sum_bytes(0, src);
                acc = csum::sum_bytes(acc, dst);
                acc += 17 + (f.len() - l4) as u32;
                acc = csum::sum_bytes(acc, &f[l4..]);
                assert_eq!(csum::fold(acc), 0xffff, "UDP checksum, {s} len {len}");
                if sp.family() == AF_INET {
                    let h: [u8; 20] = f[14..34].try_into().unwrap();
                    assert_eq!(csum::fold(csum::sum_words(0, &h)), 0xffff, "IPv4 checksum");
                }
            }
        }
    }

    #[test]
    fn bad_specs_are_refused() {
        assert!(matches!(
            spec("10.0.0.1:1", "[fd00::2]:2", 64).build(),
            Err(BenchError::FamilyMismatch { .. })
        ));
        assert!(matches!(
            spec("10.0.0.1:1", "10.0.0.2:2", MIN_DATA_LEN - 1).build(),
            Err(BenchError::PayloadTooSmall { size: 35, min: 36 })
        ));
        assert!(matches!(
            spec("10.0.0.1:1", "10.0.0.2:2", 70_000).build(),
            Err(BenchError::PayloadTooLarge { .. })
        ));
        let mut s = spec("10.0.0.1:1", "10.0.0.2:2", 64);
        s.session_id = 0;
        assert!(matches!(s.build(), Err(BenchError::BadSessions(_))));
    }
}
