//! The gateway end of the exit link: INSTALL and REVOKE, retransmitted until the exit
//! acknowledges them, and a PING every second whose PONG says whether the exit
//! restarted (and so lost every key).

use std::collections::HashMap;

use crate::proto::{Dir, LinkCrypto, LinkMsg, ProtoError};

const RETRY_MS: u64 = 200;
/// After this many sends an INSTALL is given up (the session's BIRTH times out); a
/// REVOKE keeps being retried for as long as the gateway runs, so an exit that was
/// unreachable for a while still forgets revoked keys when it comes back.
const INSTALL_TRIES: u32 = 10;
const PING_EVERY_MS: u64 = 1_000;

struct Pending {
    msg: LinkMsg,
    next_ms: u64,
    tries: u32,
}

pub struct ExitLink {
    crypto: LinkCrypto,
    pending: HashMap<(u64, u8), Pending>,
    next_ping_ms: u64,
    ping_nonce: u64,
}

/// What the link learned from a frame of the exit.
pub enum LinkEvent {
    InstallAcked(u64),
    RevokeAcked,
    /// The exit answered the current PING: its boot and how many sessions it holds.
    Pong {
        boot: u64,
        sessions: u64,
    },
}

impl ExitLink {
    pub fn new(key: &[u8; 32], start_us: u64) -> Self {
        Self {
            crypto: LinkCrypto::new(key, Dir::GatewayToExit, start_us),
            pending: HashMap::new(),
            next_ping_ms: 0,
            ping_nonce: 0,
        }
    }

    /// A PING frame when one is due.
    pub fn ping(&mut self, now_ms: u64) -> Option<Vec<u8>> {
        if now_ms < self.next_ping_ms {
            return None;
        }
        self.next_ping_ms = now_ms + PING_EVERY_MS;
        self.ping_nonce += 1;
        Some(self.crypto.seal(&LinkMsg::Ping {
            nonce: self.ping_nonce,
        }))
    }

    /// Queues `msg` (replacing an older one of the same kind for the session) and
    /// returns its first frame.
    pub fn send(&mut self, msg: LinkMsg, now_ms: u64) -> Vec<u8> {
        let frame = self.crypto.seal(&msg);
        let key = (session_of(&msg), msg.type_code());
        // A REVOKE supersedes a pending INSTALL of the same session.
        if let LinkMsg::Revoke { session_id } = msg {
            self.pending.retain(|&(sid, _), _| sid != session_id);
        }
        self.pending.insert(
            key,
            Pending {
                msg,
                next_ms: now_ms + RETRY_MS,
                tries: 1,
            },
        );
        frame
    }

    /// Frames due for retransmission; INSTALLs past their last try are returned as
    /// given-up session ids.
    pub fn due(&mut self, now_ms: u64) -> (Vec<Vec<u8>>, Vec<u64>) {
        let mut frames = Vec::new();
        let mut gave_up = Vec::new();
        let crypto = &mut self.crypto;
        self.pending.retain(|&(sid, kind), p| {
            if p.next_ms > now_ms {
                return true;
            }
            let install = matches!(p.msg, LinkMsg::Install { .. });
            if install && p.tries >= INSTALL_TRIES {
                gave_up.push(sid);
                let _ = kind;
                return false;
            }
            frames.push(crypto.seal(&p.msg));
            p.tries += 1;
            p.next_ms = now_ms + RETRY_MS * u64::from(p.tries.min(10));
            true
        });
        (frames, gave_up)
    }

    pub fn receive(&mut self, frame: &[u8]) -> Result<Option<LinkEvent>, ProtoError> {
        match self.crypto.open(frame)? {
            LinkMsg::Ack {
                session_id,
                acked_type,
            } => {
                let Some(p) = self.pending.remove(&(session_id, acked_type)) else {
                    return Ok(None);
                };
                Ok(Some(match p.msg {
                    LinkMsg::Install { .. } => LinkEvent::InstallAcked(session_id),
                    _ => LinkEvent::RevokeAcked,
                }))
            }
            // Only the answer to the latest PING counts: an old one may predate a
            // restart of the exit.
            LinkMsg::Pong {
                nonce,
                boot,
                sessions,
            } if nonce == self.ping_nonce => Ok(Some(LinkEvent::Pong { boot, sessions })),
            // The exit never sends INSTALL, REVOKE or PING.
            _ => Ok(None),
        }
    }

    /// Drops every message of `session_id` waiting for an acknowledgement (a batch
    /// whose commit failed takes back the ones it queued).
    pub fn forget(&mut self, session_id: u64) {
        self.pending.retain(|&(sid, _), _| sid != session_id);
    }

    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }
}

fn session_of(m: &LinkMsg) -> u64 {
    m.session_id()
}
