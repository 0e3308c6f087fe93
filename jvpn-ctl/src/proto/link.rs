//! The gateway ⇄ exit link: how session keys reach the exit.
//!
//! Frames are sealed with a pre-shared key; the nonce is `node ‖ 0 ‖ direction ‖
//! counter`, so a frame reflected back at its sender fails authentication, gateway
//! nodes of one cluster (which share the key) never share a nonce, and counters start
//! at the sender's start time in microseconds so a restarted sender needs no stored
//! state and its new frames still rank above everything it sent before. The node is
//! in the frame's header too (authenticated as associated data): the exit answers
//! each node in frames carrying that node's number. A receiver accepts, per node,
//! only counters above the last one it accepted from that node, which refuses
//! replays (the nodes' counters are independent).
//!
//! Known limit: a *restarted receiver* has forgotten its last counter and accepts the
//! first authentic frame it sees, including a recorded old one. INSTALL and REVOKE are
//! idempotent and the keys in an old INSTALL belong to a dead session, so the damage
//! is a stale, unusable key entry until the gateway's next REVOKE.

use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    path::Path,
};

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};

use super::{
    ProtoError,
    fields::{ADDR_LEN, arr, decode_addr, encode_addr, u64_at},
    files,
};

pub const MAGIC: [u8; 4] = *b"JVLK";
/// Magic, type, node u16, a zero byte, counter: the associated data of every frame.
pub const LINK_HEADER_LEN: usize = 16;
pub const LINK_TAG_LEN: usize = 16;

pub mod link_type {
    pub const INSTALL: u8 = 1;
    pub const REVOKE: u8 = 2;
    pub const ACK: u8 = 3;
    pub const PING: u8 = 4;
    pub const PONG: u8 = 5;
}

const INSTALL_BODY: usize = 8 + ADDR_LEN + 32 + 32 + ADDR_LEN + 2 + 8;
/// An INSTALL of a dual-stack session: the IPv6 tunnel address after the epoch.
const INSTALL_DUAL_BODY: usize = INSTALL_BODY + ADDR_LEN;
const REVOKE_BODY: usize = 8 + 8;
const ACK_BODY: usize = 9;
const PING_BODY: usize = 8;
const PONG_BODY: usize = 24;

#[derive(Clone, PartialEq, Eq)]
pub enum LinkMsg {
    Install {
        session_id: u64,
        tunnel_addr: IpAddr,
        /// The session's IPv6 tunnel address beside an IPv4 `tunnel_addr`.
        tunnel6: Option<Ipv6Addr>,
        c2x: [u8; 32],
        x2c: [u8; 32],
        ret: SocketAddr,
        /// The sender's ownership of the session (its fencing token; 0 without a
        /// cluster): the exit refuses an INSTALL below the highest it has seen.
        epoch: u64,
    },
    Revoke {
        session_id: u64,
        /// As in INSTALL: a REVOKE below the session's epoch is acknowledged, not obeyed.
        epoch: u64,
    },
    Ack {
        session_id: u64,
        acked_type: u8,
    },
    /// Gateway → exit, every second: "who are you now?"
    Ping {
        nonce: u64,
    },
    /// Exit → gateway: the PING's nonce, the exit's boot (its start time in µs: a new
    /// value means it restarted and lost its keys) and how many sessions it holds.
    Pong {
        nonce: u64,
        boot: u64,
        sessions: u64,
    },
}

impl fmt::Debug for LinkMsg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkMsg::Install {
                session_id,
                tunnel_addr,
                tunnel6,
                ret,
                epoch,
                ..
            } => f
                .debug_struct("Install")
                .field("session_id", session_id)
                .field("tunnel_addr", tunnel_addr)
                .field("tunnel6", tunnel6)
                .field("ret", ret)
                .field("epoch", epoch)
                .field("keys", &"<redacted>")
                .finish(),
            LinkMsg::Revoke { session_id, epoch } => f
                .debug_struct("Revoke")
                .field("session_id", session_id)
                .field("epoch", epoch)
                .finish(),
            LinkMsg::Ack {
                session_id,
                acked_type,
            } => f
                .debug_struct("Ack")
                .field("session_id", session_id)
                .field("acked_type", acked_type)
                .finish(),
            LinkMsg::Ping { nonce } => f.debug_struct("Ping").field("nonce", nonce).finish(),
            LinkMsg::Pong {
                nonce,
                boot,
                sessions,
            } => f
                .debug_struct("Pong")
                .field("nonce", nonce)
                .field("boot", boot)
                .field("sessions", sessions)
                .finish(),
        }
    }
}

impl LinkMsg {
    pub fn type_code(&self) -> u8 {
        match self {
            LinkMsg::Install { .. } => link_type::INSTALL,
            LinkMsg::Revoke { .. } => link_type::REVOKE,
            LinkMsg::Ack { .. } => link_type::ACK,
            LinkMsg::Ping { .. } => link_type::PING,
            LinkMsg::Pong { .. } => link_type::PONG,
        }
    }

    pub fn session_id(&self) -> u64 {
        match *self {
            LinkMsg::Install { session_id, .. }
            | LinkMsg::Revoke { session_id, .. }
            | LinkMsg::Ack { session_id, .. } => session_id,
            LinkMsg::Ping { .. } | LinkMsg::Pong { .. } => 0,
        }
    }

    /// The message in the plaintext body of a frame of type `ty`: the checks
    /// [`LinkCrypto::open_node`] makes once the tag verifies. Public so that the fuzz
    /// targets reach the body parser without forging tags.
    pub fn from_body(ty: u8, body: &[u8]) -> Result<Self, ProtoError> {
        match body_len(ty) {
            None => Err(ProtoError::Malformed("unknown link message type")),
            Some(n) if !body_fits(ty, n, body.len()) => Err(ProtoError::BadLength {
                expected: n,
                got: body.len(),
            }),
            Some(_) => Self::decode_body(ty, body),
        }
    }

    /// The plaintext body [`LinkMsg::from_body`] reads.
    pub fn body(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_body(&mut out);
        out
    }

    fn encode_body(&self, out: &mut Vec<u8>) {
        match self {
            LinkMsg::Install {
                session_id,
                tunnel_addr,
                tunnel6,
                c2x,
                x2c,
                ret,
                epoch,
            } => {
                out.extend_from_slice(&session_id.to_be_bytes());
                out.extend_from_slice(&encode_addr(*tunnel_addr));
                out.extend_from_slice(c2x);
                out.extend_from_slice(x2c);
                out.extend_from_slice(&encode_addr(ret.ip()));
                out.extend_from_slice(&ret.port().to_be_bytes());
                out.extend_from_slice(&epoch.to_be_bytes());
                if let Some(a) = tunnel6 {
                    out.extend_from_slice(&encode_addr(IpAddr::V6(*a)));
                }
            }
            LinkMsg::Revoke { session_id, epoch } => {
                out.extend_from_slice(&session_id.to_be_bytes());
                out.extend_from_slice(&epoch.to_be_bytes());
            }
            LinkMsg::Ack {
                session_id,
                acked_type,
            } => {
                out.extend_from_slice(&session_id.to_be_bytes());
                out.push(*acked_type);
            }
            LinkMsg::Ping { nonce } => out.extend_from_slice(&nonce.to_be_bytes()),
            LinkMsg::Pong {
                nonce,
                boot,
                sessions,
            } => {
                for v in [nonce, boot, sessions] {
                    out.extend_from_slice(&v.to_be_bytes());
                }
            }
        }
    }

    fn decode_body(ty: u8, b: &[u8]) -> Result<Self, ProtoError> {
        // Lengths were checked against `body_len(ty)` by the caller.
        let session_id = u64_at(b, 0);
        Ok(match ty {
            link_type::INSTALL => {
                let tunnel_addr = decode_addr(&arr(b, 8))?;
                let c2x = arr(b, 8 + ADDR_LEN);
                let x2c = arr(b, 8 + ADDR_LEN + 32);
                let ret_ip = decode_addr(&arr(b, 8 + ADDR_LEN + 64))?;
                let port = u16::from_be_bytes(arr(b, 8 + 2 * ADDR_LEN + 64));
                let tunnel6 = match b.len() {
                    INSTALL_DUAL_BODY => match decode_addr(&arr(b, INSTALL_BODY))? {
                        IpAddr::V6(a) if tunnel_addr.is_ipv4() => Some(a),
                        _ => {
                            return Err(ProtoError::Malformed(
                                "an INSTALL's second tunnel address is not IPv6 beside IPv4",
                            ));
                        }
                    },
                    _ => None,
                };
                LinkMsg::Install {
                    session_id,
                    tunnel_addr,
                    tunnel6,
                    c2x,
                    x2c,
                    ret: SocketAddr::new(ret_ip, port),
                    epoch: u64_at(b, 8 + 2 * ADDR_LEN + 64 + 2),
                }
            }
            link_type::REVOKE => LinkMsg::Revoke {
                session_id,
                epoch: u64_at(b, 8),
            },
            link_type::PING => LinkMsg::Ping { nonce: session_id },
            link_type::PONG => LinkMsg::Pong {
                nonce: session_id,
                boot: u64_at(b, 8),
                sessions: u64_at(b, 16),
            },
            _ => {
                let acked_type = b[8];
                if acked_type != link_type::INSTALL && acked_type != link_type::REVOKE {
                    return Err(ProtoError::Malformed("link ACK of an unknown type"));
                }
                LinkMsg::Ack {
                    session_id,
                    acked_type,
                }
            }
        })
    }
}

/// An INSTALL has two lengths (with and without an IPv6 tunnel address); every other
/// body exactly its one.
fn body_fits(ty: u8, body_len: usize, got: usize) -> bool {
    got == body_len || (ty == link_type::INSTALL && got == INSTALL_DUAL_BODY)
}

/// The (shortest) body length of a message type.
fn body_len(ty: u8) -> Option<usize> {
    match ty {
        link_type::INSTALL => Some(INSTALL_BODY),
        link_type::REVOKE => Some(REVOKE_BODY),
        link_type::ACK => Some(ACK_BODY),
        link_type::PING => Some(PING_BODY),
        link_type::PONG => Some(PONG_BODY),
        _ => None,
    }
}

/// Who sends: in the nonce's first word, so the two directions never share a nonce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    GatewayToExit = 0,
    ExitToGateway = 1,
}

impl Dir {
    fn other(self) -> Dir {
        match self {
            Dir::GatewayToExit => Dir::ExitToGateway,
            Dir::ExitToGateway => Dir::GatewayToExit,
        }
    }
}

/// `node u16 ‖ 0 ‖ dir u8 ‖ ctr u64`: node 0 gives the single gateway's nonces of
/// before clusters (`dir u32 ‖ ctr`).
fn nonce(node: u16, dir: Dir, ctr: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[..2].copy_from_slice(&node.to_be_bytes());
    n[3] = dir as u8;
    n[4..].copy_from_slice(&ctr.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// One end of the link: key, my sending direction and node, next send counter, and
/// the last counter accepted from each node.
///
/// A gateway node seals with its own node number and opens only frames carrying it
/// ([`LinkCrypto::open`]); the exit opens every node's frames
/// ([`LinkCrypto::open_node`]) and answers each in frames carrying that node's
/// number ([`LinkCrypto::seal_for`]), so every frame under the shared key has its
/// own nonce.
pub struct LinkCrypto {
    key: LessSafeKey,
    me: Dir,
    node: u16,
    next_send: u64,
    last_accepted: HashMap<u16, u64>,
}

impl fmt::Debug for LinkCrypto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkCrypto")
            .field("me", &self.me)
            .field("node", &self.node)
            .field("next_send", &self.next_send)
            .field("last_accepted", &self.last_accepted)
            .finish_non_exhaustive()
    }
}

impl LinkCrypto {
    /// `node`: the node number in the frames this end seals with [`LinkCrypto::seal`]
    /// (a gateway's own; 0 without a cluster). `start_ctr`: microseconds since the
    /// epoch at process start (callers pass it; keep this pure).
    pub fn new(key: &[u8; 32], me: Dir, node: u16, start_ctr: u64) -> Self {
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, key).expect("32-byte ChaCha20 key");
        LinkCrypto {
            key: LessSafeKey::new(unbound),
            me,
            node,
            next_send: start_ctr,
            last_accepted: HashMap::new(),
        }
    }

    /// A frame carrying this end's node number.
    pub fn seal(&mut self, msg: &LinkMsg) -> Vec<u8> {
        self.seal_for(self.node, msg)
    }

    /// A frame carrying `node` (the exit's answer to that node). The send counter is
    /// this end's, shared by every node it seals for: never repeated anyway.
    pub fn seal_for(&mut self, node: u16, msg: &LinkMsg) -> Vec<u8> {
        let ctr = self.next_send;
        // Starting from a microsecond timestamp, u64 lasts ~580,000 years of frames.
        self.next_send = self.next_send.wrapping_add(1);
        let ty = msg.type_code();
        let mut out = Vec::with_capacity(LINK_HEADER_LEN + INSTALL_BODY + LINK_TAG_LEN);
        out.extend_from_slice(&MAGIC);
        out.push(ty);
        out.extend_from_slice(&node.to_be_bytes());
        out.push(0);
        out.extend_from_slice(&ctr.to_be_bytes());
        msg.encode_body(&mut out);
        let header: [u8; LINK_HEADER_LEN] = arr(&out, 0);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                nonce(node, self.me, ctr),
                Aad::from(header),
                &mut out[LINK_HEADER_LEN..],
            )
            .expect("link frames are far below the AEAD length limit");
        out.extend_from_slice(tag.as_ref());
        out
    }

    /// [`LinkCrypto::open_node`], for frames carrying this end's own node number only
    /// (a gateway node opening the exit's answers to it).
    pub fn open(&mut self, frame: &[u8]) -> Result<LinkMsg, ProtoError> {
        if frame.len() >= LINK_HEADER_LEN
            && frame[..4] == MAGIC
            && u16::from_be_bytes(arr(frame, 5)) != self.node
        {
            return Err(ProtoError::Malformed("link frame for another node"));
        }
        self.open_node(frame).map(|(_, msg)| msg)
    }

    /// Opens a frame of any node and says which node's it is. Rejects wrong
    /// magic/direction/length, bad tag, and counters not above the last one accepted
    /// from that node.
    pub fn open_node(&mut self, frame: &[u8]) -> Result<(u16, LinkMsg), ProtoError> {
        const MIN: usize = LINK_HEADER_LEN + LINK_TAG_LEN;
        if frame.len() < MIN {
            return Err(ProtoError::Truncated {
                need: MIN,
                got: frame.len(),
            });
        }
        if frame[..4] != MAGIC {
            return Err(ProtoError::Malformed("not a link frame (bad magic)"));
        }
        if frame[7] != 0 {
            return Err(ProtoError::Malformed("nonzero reserved byte in link frame"));
        }
        let ty = frame[4];
        let node = u16::from_be_bytes(arr(frame, 5));
        let Some(body) = body_len(ty) else {
            return Err(ProtoError::Malformed("unknown link message type"));
        };
        if !body_fits(ty, body, frame.len() - MIN) {
            return Err(ProtoError::BadLength {
                expected: MIN + body,
                got: frame.len(),
            });
        }
        let ctr = u64_at(frame, 8);
        if self
            .last_accepted
            .get(&node)
            .is_some_and(|&last| ctr <= last)
        {
            return Err(ProtoError::Replay(ctr));
        }
        let header: [u8; LINK_HEADER_LEN] = arr(frame, 0);
        let mut buf = frame[LINK_HEADER_LEN..].to_vec();
        let plain = self
            .key
            .open_in_place(
                nonce(node, self.me.other(), ctr),
                Aad::from(header),
                &mut buf,
            )
            .map_err(|_| ProtoError::Decrypt)?;
        let msg = LinkMsg::decode_body(ty, plain)?;
        self.last_accepted.insert(node, ctr);
        Ok((node, msg))
    }
}

/// Reads a link key file: 64 hex chars (whitespace/newline tolerated); errors name the file and the problem.
pub fn load_link_key(path: &Path) -> Result<[u8; 32], ProtoError> {
    files::read_secret(path, |bytes| {
        let text: Vec<u8> = bytes
            .iter()
            .copied()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        if text.len() != 64 {
            return Err(ProtoError::key_file(
                path,
                format!(
                    "link key must be 64 hex characters, found {} non-blank bytes",
                    text.len()
                ),
            ));
        }
        let mut key = [0u8; 32];
        hex::decode_to_slice(&text, &mut key)
            .map_err(|_| ProtoError::key_file(path, "link key is not hexadecimal"))?;
        Ok(key)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{files::testdir::TempDir, fuzz};

    const KEY: [u8; 32] = [7; 32];
    const T0: u64 = 1_700_000_000_000_000;

    fn install() -> LinkMsg {
        LinkMsg::Install {
            session_id: 0xdead_beef,
            tunnel_addr: "10.77.0.9".parse().unwrap(),
            tunnel6: None,
            c2x: [1; 32],
            x2c: [2; 32],
            ret: "[fd00::5]:7100".parse().unwrap(),
            epoch: 0x0102_0304_0506_0708,
        }
    }

    /// An INSTALL of a dual-stack session.
    fn dual_install() -> LinkMsg {
        LinkMsg::Install {
            session_id: 2,
            tunnel_addr: "10.77.0.3".parse().unwrap(),
            tunnel6: Some("fd00:77::3".parse().unwrap()),
            c2x: [3; 32],
            x2c: [4; 32],
            ret: "192.0.2.1:51820".parse().unwrap(),
            epoch: 0,
        }
    }

    fn revoke(session_id: u64) -> LinkMsg {
        LinkMsg::Revoke {
            session_id,
            epoch: 3,
        }
    }

    fn pair() -> (LinkCrypto, LinkCrypto) {
        (
            LinkCrypto::new(&KEY, Dir::GatewayToExit, 0, T0),
            LinkCrypto::new(&KEY, Dir::ExitToGateway, 0, T0 + 5),
        )
    }

    #[test]
    fn round_trips_and_sizes() {
        let (mut gw, mut exit) = pair();
        let msgs = [
            install(),
            LinkMsg::Install {
                session_id: 1,
                tunnel_addr: "fd00::2".parse().unwrap(),
                tunnel6: None,
                c2x: [3; 32],
                x2c: [4; 32],
                ret: "192.0.2.1:51820".parse().unwrap(),
                epoch: 0,
            },
            dual_install(),
            revoke(9),
        ];
        for (m, len) in msgs.iter().zip([148, 148, 165, 48]) {
            let f = gw.seal(m);
            assert_eq!(f.len(), len);
            assert_eq!(&f[..4], b"JVLK");
            assert_eq!(exit.open(&f).unwrap(), *m);
        }
        let ack = LinkMsg::Ack {
            session_id: 9,
            acked_type: link_type::REVOKE,
        };
        let f = exit.seal(&ack);
        assert_eq!(f.len(), 41);
        assert_eq!(gw.open(&f).unwrap(), ack);
        assert_eq!(ack.type_code(), 3);
        let shown = format!("{:?}", install());
        assert!(
            !shown.contains("1, 1") && shown.contains("epoch"),
            "{shown}"
        );
        let ping = LinkMsg::Ping { nonce: 7 };
        let f = gw.seal(&ping);
        assert_eq!(f.len(), 40);
        assert_eq!(exit.open(&f).unwrap(), ping);
        let pong = LinkMsg::Pong {
            nonce: 7,
            boot: 1_700_000_000_000_000,
            sessions: 3,
        };
        let f = exit.seal(&pong);
        assert_eq!(f.len(), 56);
        assert_eq!(gw.open(&f).unwrap(), pong);
    }

    /// A dual-stack INSTALL's second address is IPv6 beside an IPv4 first one; any
    /// other pairing, or a length between the two forms, is refused.
    #[test]
    fn dual_install_pairs_ipv4_with_ipv6_only() {
        let good = dual_install();
        let body = good.body();
        assert_eq!(LinkMsg::from_body(link_type::INSTALL, &body).unwrap(), good);
        let mut v4_second = body.clone();
        v4_second[INSTALL_BODY..].copy_from_slice(&encode_addr("10.77.0.4".parse().unwrap()));
        assert!(LinkMsg::from_body(link_type::INSTALL, &v4_second).is_err());
        let mut v6_first = body.clone();
        v6_first[8..8 + ADDR_LEN].copy_from_slice(&encode_addr("fd00::9".parse().unwrap()));
        assert!(LinkMsg::from_body(link_type::INSTALL, &v6_first).is_err());
        assert!(matches!(
            LinkMsg::from_body(link_type::INSTALL, &body[..INSTALL_DUAL_BODY - 1]),
            Err(ProtoError::BadLength { .. })
        ));
    }

    /// The layout is the documented one, and node 0 seals exactly the frames of a
    /// single gateway before clusters: header `JVLK ‖ type ‖ 0[3] ‖ ctr`, nonce
    /// `dir u32 ‖ ctr`.
    #[test]
    fn node_zero_is_the_single_gateway_format() {
        let (mut gw, _) = pair();
        let f = gw.seal(&revoke(9));
        assert_eq!(&f[4..8], &[link_type::REVOKE, 0, 0, 0]);
        assert_eq!(u64_at(&f, 8), T0);
        let mut n = [0u8; 12];
        n[..4].copy_from_slice(&(Dir::GatewayToExit as u32).to_be_bytes());
        n[4..].copy_from_slice(&T0.to_be_bytes());
        let mut body = Vec::new();
        revoke(9).encode_body(&mut body);
        assert_eq!(body.len(), REVOKE_BODY);
        let tag = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &KEY).unwrap())
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(n),
                Aad::from(arr::<LINK_HEADER_LEN>(&f, 0)),
                &mut body,
            )
            .unwrap();
        assert_eq!(&f[16..32], &body[..]);
        assert_eq!(&f[32..], tag.as_ref());
        // Node 7: in the header (bytes 5..7, big-endian) and so in the AAD.
        let mut node7 = LinkCrypto::new(&KEY, Dir::GatewayToExit, 7, T0);
        let f = node7.seal(&revoke(9));
        assert_eq!(&f[4..8], &[link_type::REVOKE, 0, 7, 0]);
    }

    /// Two gateway nodes share the key and, here, even their start counter: their
    /// frames differ (nonce and header), the exit accepts both interleaved, and
    /// answers each in a frame only that node opens.
    #[test]
    fn nodes_sharing_the_key_never_share_a_nonce() {
        let mut n1 = LinkCrypto::new(&KEY, Dir::GatewayToExit, 1, T0);
        let mut n2 = LinkCrypto::new(&KEY, Dir::GatewayToExit, 2, T0);
        let mut exit = LinkCrypto::new(&KEY, Dir::ExitToGateway, 0, T0 + 5);
        let (a, b) = (n1.seal(&install()), n2.seal(&install()));
        assert_eq!(u64_at(&a, 8), u64_at(&b, 8), "same counter");
        assert_ne!(a, b);
        assert_ne!(
            a[LINK_HEADER_LEN..],
            b[LINK_HEADER_LEN..],
            "same plaintext, different nonce: different ciphertext and tag"
        );
        assert_eq!(exit.open_node(&a).unwrap(), (1, install()));
        assert_eq!(exit.open_node(&b).unwrap(), (2, install()));
        for _ in 0..3 {
            assert_eq!(exit.open_node(&n2.seal(&revoke(1))).unwrap().0, 2);
            assert_eq!(exit.open_node(&n1.seal(&revoke(1))).unwrap().0, 1);
        }
        // The node is authenticated: relabelling a frame breaks it.
        let mut relabelled = n1.seal(&revoke(1));
        relabelled[6] = 2;
        assert!(matches!(
            exit.open_node(&relabelled),
            Err(ProtoError::Decrypt)
        ));
        // The exit's answers: one counter for all, each frame for its node only.
        let ack = LinkMsg::Ack {
            session_id: 1,
            acked_type: link_type::REVOKE,
        };
        let (to1, to2) = (exit.seal_for(1, &ack), exit.seal_for(2, &ack));
        assert_eq!(&to1[5..8], &[0, 1, 0]);
        assert!(matches!(n2.open(&to1), Err(ProtoError::Malformed(_))));
        assert!(matches!(n1.open(&to2), Err(ProtoError::Malformed(_))));
        assert_eq!(n1.open(&to1).unwrap(), ack);
        assert_eq!(n2.open(&to2).unwrap(), ack);
        // An exit→gateway frame of node 1 is not a gateway→exit one.
        assert!(matches!(exit.open_node(&to1), Err(ProtoError::Decrypt)));
    }

    /// Replay refusal is per node: node 2's counters are independent of node 1's.
    #[test]
    fn replays_are_refused_per_node() {
        let mut n1 = LinkCrypto::new(&KEY, Dir::GatewayToExit, 1, T0 + 1_000);
        let mut n2 = LinkCrypto::new(&KEY, Dir::GatewayToExit, 2, T0);
        let mut exit = LinkCrypto::new(&KEY, Dir::ExitToGateway, 0, T0);
        let f1 = n1.seal(&revoke(1));
        let old2 = n2.seal(&revoke(2));
        let f2 = n2.seal(&revoke(2));
        assert!(exit.open_node(&f1).is_ok());
        // Below node 1's last counter, yet node 2's first: accepted.
        assert!(u64_at(&f2, 8) < u64_at(&f1, 8));
        assert_eq!(exit.open_node(&f2).unwrap().0, 2);
        assert!(matches!(exit.open_node(&f1), Err(ProtoError::Replay(_))));
        assert!(matches!(exit.open_node(&f2), Err(ProtoError::Replay(_))));
        assert!(matches!(exit.open_node(&old2), Err(ProtoError::Replay(_))));
        assert!(exit.open_node(&n1.seal(&revoke(1))).is_ok());
        assert!(exit.open_node(&n2.seal(&revoke(2))).is_ok());
    }

    #[test]
    fn replay_and_old_counters_refused() {
        let (mut gw, mut exit) = pair();
        let f1 = gw.seal(&install());
        let f2 = gw.seal(&revoke(1));
        assert!(exit.open(&f2).is_ok());
        assert!(matches!(exit.open(&f2), Err(ProtoError::Replay(_))));
        assert!(matches!(exit.open(&f1), Err(ProtoError::Replay(_))));
        // A restarted gateway starts from a later clock and is accepted at once.
        let mut gw2 = LinkCrypto::new(&KEY, Dir::GatewayToExit, 0, T0 + 1_000_000);
        assert!(exit.open(&gw2.seal(&install())).is_ok());
        // ... while one whose clock went backwards is refused until it catches up.
        let mut gw3 = LinkCrypto::new(&KEY, Dir::GatewayToExit, 0, T0);
        assert!(matches!(
            exit.open(&gw3.seal(&install())),
            Err(ProtoError::Replay(_))
        ));
    }

    #[test]
    fn direction_and_key_refusal() {
        let (mut gw, _) = pair();
        let f = gw.seal(&install());
        // Reflected back at the gateway: the exit→gateway nonce does not match.
        let mut gw_rx = LinkCrypto::new(&KEY, Dir::GatewayToExit, 0, T0);
        assert!(matches!(gw_rx.open(&f), Err(ProtoError::Decrypt)));
        let mut other = LinkCrypto::new(&[8; 32], Dir::ExitToGateway, 0, T0);
        assert!(matches!(other.open(&f), Err(ProtoError::Decrypt)));
        // A failed frame does not move the counter.
        let mut exit = LinkCrypto::new(&KEY, Dir::ExitToGateway, 0, T0);
        let mut bad = f.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(exit.open(&bad).is_err());
        assert!(exit.open(&f).is_ok());
    }

    #[test]
    fn malformed_frames() {
        let (mut gw, _) = pair();
        let f = gw.seal(&revoke(1));
        let mut exit = LinkCrypto::new(&KEY, Dir::ExitToGateway, 0, 0);
        let mut m = f.clone();
        m[0] = b'X';
        assert!(matches!(exit.open(&m), Err(ProtoError::Malformed(_))));
        let mut m = f.clone();
        m[4] = 9;
        assert!(matches!(exit.open(&m), Err(ProtoError::Malformed(_))));
        let mut m = f.clone();
        m[7] = 1;
        assert!(matches!(exit.open_node(&m), Err(ProtoError::Malformed(_))));
        let mut m = f.clone();
        m[4] = link_type::ACK;
        assert!(matches!(exit.open(&m), Err(ProtoError::BadLength { .. })));
    }

    #[test]
    fn fuzz_link_open() {
        for msg in [
            install(),
            revoke(3),
            LinkMsg::Ack {
                session_id: 3,
                acked_type: 1,
            },
            LinkMsg::Ping { nonce: 3 },
            LinkMsg::Pong {
                nonce: 3,
                boot: 4,
                sessions: 5,
            },
        ] {
            for node in [0, 0x0102] {
                let mut gw = LinkCrypto::new(&KEY, Dir::GatewayToExit, node, T0);
                let f = gw.seal(&msg);
                fuzz::authenticated(&f, |b| {
                    LinkCrypto::new(&KEY, Dir::ExitToGateway, 0, 0)
                        .open_node(b)
                        .is_ok()
                });
            }
        }
    }

    #[test]
    fn link_key_file() {
        let dir = TempDir::new("linkkey");
        let p = dir.path().join("link.key");
        std::fs::write(&p, format!("  {}\n", "ab".repeat(32))).unwrap();
        assert_eq!(load_link_key(&p).unwrap(), [0xab; 32]);
        std::fs::write(&p, format!("{}\n{}\n", "AB".repeat(16), "cd".repeat(16))).unwrap();
        assert_eq!(load_link_key(&p).unwrap()[31], 0xcd);
        for (content, needle) in [
            ("abcd\n".to_string(), "64 hex"),
            ("zz".repeat(32), "not hexadecimal"),
            ("ab".repeat(33), "64 hex"),
        ] {
            std::fs::write(&p, content).unwrap();
            let e = load_link_key(&p).unwrap_err().to_string();
            assert!(e.contains(needle) && e.contains("link.key"), "{e}");
        }
        let e = load_link_key(&dir.path().join("missing")).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
    }
}
