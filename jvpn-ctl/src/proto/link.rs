//! The gateway ⇄ exit link: how session keys reach the exit.
//!
//! Frames are sealed with a pre-shared key; the nonce is `direction ‖ counter`, so a
//! frame reflected back at its sender fails authentication, and counters start at the
//! sender's start time in microseconds so a restarted sender needs no stored state and
//! its new frames still rank above everything it sent before. A receiver accepts only
//! counters above the last one it accepted, which refuses replays.
//!
//! Known limit: a *restarted receiver* has forgotten its last counter and accepts the
//! first authentic frame it sees, including a recorded old one. INSTALL and REVOKE are
//! idempotent and the keys in an old INSTALL belong to a dead session, so the damage
//! is a stale, unusable key entry until the gateway's next REVOKE.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    path::Path,
};

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};

use super::{
    ProtoError,
    fields::{ADDR_LEN, arr, decode_addr, encode_addr, u64_at},
    files,
};

pub const MAGIC: [u8; 4] = *b"JVLK";
/// Magic, type, three zero bytes, counter: the associated data of every frame.
pub const LINK_HEADER_LEN: usize = 16;
pub const LINK_TAG_LEN: usize = 16;

pub mod link_type {
    pub const INSTALL: u8 = 1;
    pub const REVOKE: u8 = 2;
    pub const ACK: u8 = 3;
    pub const PING: u8 = 4;
    pub const PONG: u8 = 5;
}

const INSTALL_BODY: usize = 8 + ADDR_LEN + 32 + 32 + ADDR_LEN + 2;
const REVOKE_BODY: usize = 8;
const ACK_BODY: usize = 9;
const PING_BODY: usize = 8;
const PONG_BODY: usize = 24;

#[derive(Clone, PartialEq, Eq)]
pub enum LinkMsg {
    Install {
        session_id: u64,
        tunnel_addr: IpAddr,
        c2x: [u8; 32],
        x2c: [u8; 32],
        ret: SocketAddr,
    },
    Revoke {
        session_id: u64,
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
                ret,
                ..
            } => f
                .debug_struct("Install")
                .field("session_id", session_id)
                .field("tunnel_addr", tunnel_addr)
                .field("ret", ret)
                .field("keys", &"<redacted>")
                .finish(),
            LinkMsg::Revoke { session_id } => f
                .debug_struct("Revoke")
                .field("session_id", session_id)
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
            | LinkMsg::Revoke { session_id }
            | LinkMsg::Ack { session_id, .. } => session_id,
            LinkMsg::Ping { .. } | LinkMsg::Pong { .. } => 0,
        }
    }

    fn encode_body(&self, out: &mut Vec<u8>) {
        match self {
            LinkMsg::Install {
                session_id,
                tunnel_addr,
                c2x,
                x2c,
                ret,
            } => {
                out.extend_from_slice(&session_id.to_be_bytes());
                out.extend_from_slice(&encode_addr(*tunnel_addr));
                out.extend_from_slice(c2x);
                out.extend_from_slice(x2c);
                out.extend_from_slice(&encode_addr(ret.ip()));
                out.extend_from_slice(&ret.port().to_be_bytes());
            }
            LinkMsg::Revoke { session_id } => out.extend_from_slice(&session_id.to_be_bytes()),
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
                LinkMsg::Install {
                    session_id,
                    tunnel_addr,
                    c2x,
                    x2c,
                    ret: SocketAddr::new(ret_ip, port),
                }
            }
            link_type::REVOKE => LinkMsg::Revoke { session_id },
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

/// Who sends: the nonce's first word, so the two directions never share a nonce.
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

fn nonce(dir: Dir, ctr: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(&(dir as u32).to_be_bytes());
    n[4..].copy_from_slice(&ctr.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// One end of the link: key, my sending direction, next send counter, last accepted.
pub struct LinkCrypto {
    key: LessSafeKey,
    me: Dir,
    next_send: u64,
    last_accepted: Option<u64>,
}

impl fmt::Debug for LinkCrypto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkCrypto")
            .field("me", &self.me)
            .field("next_send", &self.next_send)
            .field("last_accepted", &self.last_accepted)
            .finish_non_exhaustive()
    }
}

impl LinkCrypto {
    /// `start_ctr`: microseconds since the epoch at process start (callers pass it; keep this pure).
    pub fn new(key: &[u8; 32], me: Dir, start_ctr: u64) -> Self {
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, key).expect("32-byte ChaCha20 key");
        LinkCrypto {
            key: LessSafeKey::new(unbound),
            me,
            next_send: start_ctr,
            last_accepted: None,
        }
    }

    pub fn seal(&mut self, msg: &LinkMsg) -> Vec<u8> {
        let ctr = self.next_send;
        // Starting from a microsecond timestamp, u64 lasts ~580,000 years of frames.
        self.next_send = self.next_send.wrapping_add(1);
        let ty = msg.type_code();
        let mut out = Vec::with_capacity(LINK_HEADER_LEN + INSTALL_BODY + LINK_TAG_LEN);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&[ty, 0, 0, 0]);
        out.extend_from_slice(&ctr.to_be_bytes());
        msg.encode_body(&mut out);
        let header: [u8; LINK_HEADER_LEN] = arr(&out, 0);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                nonce(self.me, ctr),
                Aad::from(header),
                &mut out[LINK_HEADER_LEN..],
            )
            .expect("link frames are far below the AEAD length limit");
        out.extend_from_slice(tag.as_ref());
        out
    }

    /// Rejects wrong magic/direction/length, bad tag, and counters not above the last accepted one.
    pub fn open(&mut self, frame: &[u8]) -> Result<LinkMsg, ProtoError> {
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
        if frame[5..8] != [0, 0, 0] {
            return Err(ProtoError::Malformed(
                "nonzero reserved bytes in link frame",
            ));
        }
        let ty = frame[4];
        let Some(body) = body_len(ty) else {
            return Err(ProtoError::Malformed("unknown link message type"));
        };
        if frame.len() != MIN + body {
            return Err(ProtoError::BadLength {
                expected: MIN + body,
                got: frame.len(),
            });
        }
        let ctr = u64_at(frame, 8);
        if self.last_accepted.is_some_and(|last| ctr <= last) {
            return Err(ProtoError::Replay(ctr));
        }
        let header: [u8; LINK_HEADER_LEN] = arr(frame, 0);
        let mut buf = frame[LINK_HEADER_LEN..].to_vec();
        let plain = self
            .key
            .open_in_place(nonce(self.me.other(), ctr), Aad::from(header), &mut buf)
            .map_err(|_| ProtoError::Decrypt)?;
        let msg = LinkMsg::decode_body(ty, plain)?;
        self.last_accepted = Some(ctr);
        Ok(msg)
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
            c2x: [1; 32],
            x2c: [2; 32],
            ret: "[fd00::5]:7100".parse().unwrap(),
        }
    }

    fn pair() -> (LinkCrypto, LinkCrypto) {
        (
            LinkCrypto::new(&KEY, Dir::GatewayToExit, T0),
            LinkCrypto::new(&KEY, Dir::ExitToGateway, T0 + 5),
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
                c2x: [3; 32],
                x2c: [4; 32],
                ret: "192.0.2.1:51820".parse().unwrap(),
            },
            LinkMsg::Revoke { session_id: 9 },
        ];
        for (m, len) in msgs.iter().zip([140, 140, 40]) {
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
        assert!(!format!("{:?}", install()).contains("1, 1"));
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

    #[test]
    fn replay_and_old_counters_refused() {
        let (mut gw, mut exit) = pair();
        let f1 = gw.seal(&install());
        let f2 = gw.seal(&LinkMsg::Revoke { session_id: 1 });
        assert!(exit.open(&f2).is_ok());
        assert!(matches!(exit.open(&f2), Err(ProtoError::Replay(_))));
        assert!(matches!(exit.open(&f1), Err(ProtoError::Replay(_))));
        // A restarted gateway starts from a later clock and is accepted at once.
        let mut gw2 = LinkCrypto::new(&KEY, Dir::GatewayToExit, T0 + 1_000_000);
        assert!(exit.open(&gw2.seal(&install())).is_ok());
        // ... while one whose clock went backwards is refused until it catches up.
        let mut gw3 = LinkCrypto::new(&KEY, Dir::GatewayToExit, T0);
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
        let mut gw_rx = LinkCrypto::new(&KEY, Dir::GatewayToExit, T0);
        assert!(matches!(gw_rx.open(&f), Err(ProtoError::Decrypt)));
        let mut other = LinkCrypto::new(&[8; 32], Dir::ExitToGateway, T0);
        assert!(matches!(other.open(&f), Err(ProtoError::Decrypt)));
        // A failed frame does not move the counter.
        let mut exit = LinkCrypto::new(&KEY, Dir::ExitToGateway, T0);
        let mut bad = f.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(exit.open(&bad).is_err());
        assert!(exit.open(&f).is_ok());
    }

    #[test]
    fn malformed_frames() {
        let (mut gw, _) = pair();
        let f = gw.seal(&LinkMsg::Revoke { session_id: 1 });
        let mut exit = LinkCrypto::new(&KEY, Dir::ExitToGateway, 0);
        let mut m = f.clone();
        m[0] = b'X';
        assert!(matches!(exit.open(&m), Err(ProtoError::Malformed(_))));
        let mut m = f.clone();
        m[4] = 9;
        assert!(matches!(exit.open(&m), Err(ProtoError::Malformed(_))));
        let mut m = f.clone();
        m[4] = link_type::ACK;
        assert!(matches!(exit.open(&m), Err(ProtoError::BadLength { .. })));
    }

    #[test]
    fn fuzz_link_open() {
        for msg in [
            install(),
            LinkMsg::Revoke { session_id: 3 },
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
            let (mut gw, _) = pair();
            let f = gw.seal(&msg);
            fuzz::authenticated(&f, |b| {
                LinkCrypto::new(&KEY, Dir::ExitToGateway, 0).open(b).is_ok()
            });
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
