//! The gateway end of the exit link: INSTALL and REVOKE, retransmitted until the exit
//! acknowledges them, and a PING every second whose PONG says whether the exit
//! restarted (and so lost every key).

use std::collections::{HashMap, VecDeque};

use crate::proto::{Dir, LinkCrypto, LinkMsg, ProtoError};

const RETRY_MS: u64 = 200;
/// After this many sends an INSTALL is given up (the session's BIRTH times out); a
/// REVOKE keeps being retried for as long as the gateway runs, so an exit that was
/// unreachable for a while still forgets revoked keys when it comes back.
const INSTALL_TRIES: u32 = 10;
const PING_EVERY_MS: u64 = 1_000;
/// Messages sent and not yet acknowledged at most. A restart re-announces every
/// session at once (100,000 INSTALLs); unpaced, they would overflow the socket and
/// the exit's, and every retry would send them all again. The rest wait in order and
/// go as acknowledgements come back.
const WINDOW: usize = 256;

struct Pending {
    msg: LinkMsg,
    next_ms: u64,
    tries: u32,
    /// Sent at least once (counts against the window).
    sent: bool,
}

type Key = (u64, u8);

pub struct ExitLink {
    crypto: LinkCrypto,
    pending: HashMap<Key, Pending>,
    /// Pending messages not sent yet, oldest first (may hold keys since acknowledged
    /// or replaced: skipped when their turn comes).
    queue: VecDeque<Key>,
    in_flight: usize,
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
    /// `node`: this gateway's node number (0: no cluster), in every frame's header and
    /// nonce; the exit answers in frames carrying it, and no other is accepted.
    pub fn new(key: &[u8; 32], node: u16, start_us: u64) -> Self {
        Self {
            crypto: LinkCrypto::new(key, Dir::GatewayToExit, node, start_us),
            pending: HashMap::new(),
            queue: VecDeque::new(),
            in_flight: 0,
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
    /// returns its first frame, or `None` while the window is full (it goes out from
    /// [`ExitLink::refill`] or [`ExitLink::due`] in its turn).
    pub fn send(&mut self, msg: LinkMsg, now_ms: u64) -> Option<Vec<u8>> {
        let key = (session_of(&msg), msg.type_code());
        // A REVOKE supersedes a pending INSTALL of the same session.
        if let LinkMsg::Revoke { session_id, .. } = msg {
            self.forget(session_id);
        } else {
            self.remove(key);
        }
        let mut p = Pending {
            msg,
            next_ms: now_ms + RETRY_MS,
            tries: 1,
            sent: false,
        };
        let frame = if self.in_flight < WINDOW {
            p.sent = true;
            self.in_flight += 1;
            Some(self.crypto.seal(&p.msg))
        } else {
            self.queue.push_back(key);
            None
        };
        self.pending.insert(key, p);
        frame
    }

    /// First frames of queued messages, as far as the window has room.
    pub fn refill(&mut self, now_ms: u64) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        while self.in_flight < WINDOW {
            let Some(key) = self.queue.pop_front() else {
                break;
            };
            let Some(p) = self.pending.get_mut(&key).filter(|p| !p.sent) else {
                continue;
            };
            p.sent = true;
            p.next_ms = now_ms + RETRY_MS;
            self.in_flight += 1;
            frames.push(self.crypto.seal(&p.msg));
        }
        frames
    }

    /// Frames due for retransmission, then queued ones the window has room for;
    /// INSTALLs past their last try are returned as given-up session ids.
    pub fn due(&mut self, now_ms: u64) -> (Vec<Vec<u8>>, Vec<u64>) {
        let mut frames = Vec::new();
        let mut gave_up = Vec::new();
        let crypto = &mut self.crypto;
        let in_flight = &mut self.in_flight;
        self.pending.retain(|&(sid, _), p| {
            if !p.sent || p.next_ms > now_ms {
                return true;
            }
            let install = matches!(p.msg, LinkMsg::Install { .. });
            if install && p.tries >= INSTALL_TRIES {
                gave_up.push(sid);
                *in_flight -= 1;
                return false;
            }
            frames.push(crypto.seal(&p.msg));
            p.tries += 1;
            p.next_ms = now_ms + RETRY_MS * u64::from(p.tries.min(10));
            true
        });
        frames.extend(self.refill(now_ms));
        (frames, gave_up)
    }

    fn remove(&mut self, key: Key) -> Option<Pending> {
        let p = self.pending.remove(&key)?;
        if p.sent {
            self.in_flight -= 1;
        }
        Some(p)
    }

    pub fn receive(&mut self, frame: &[u8]) -> Result<Option<LinkEvent>, ProtoError> {
        match self.crypto.open(frame)? {
            LinkMsg::Ack {
                session_id,
                acked_type,
            } => {
                let Some(p) = self.remove((session_id, acked_type)) else {
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
        let in_flight = &mut self.in_flight;
        self.pending.retain(|&(sid, _), p| {
            let keep = sid != session_id;
            if !keep && p.sent {
                *in_flight -= 1;
            }
            keep
        });
    }

    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }
}

fn session_of(m: &LinkMsg) -> u64 {
    m.session_id()
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::proto::link::link_type;

    const KEY: [u8; 32] = [7; 32];

    fn install(id: u64) -> LinkMsg {
        LinkMsg::Install {
            session_id: id,
            tunnel_addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
            tunnel6: None,
            c2x: [1; 32],
            x2c: [2; 32],
            ret: "10.77.9.1:51820".parse().unwrap(),
            epoch: 0,
        }
    }

    /// The exit's side: opens the gateway's frames, seals acknowledgements.
    fn exit() -> LinkCrypto {
        LinkCrypto::new(&KEY, Dir::ExitToGateway, 0, 1)
    }

    fn ack(exit: &mut LinkCrypto, link: &mut ExitLink, id: u64) {
        let f = exit.seal(&LinkMsg::Ack {
            session_id: id,
            acked_type: link_type::INSTALL,
        });
        assert!(matches!(
            link.receive(&f),
            Ok(Some(LinkEvent::InstallAcked(got))) if got == id
        ));
    }

    #[test]
    fn a_burst_goes_out_a_window_at_a_time_in_order() {
        let mut link = ExitLink::new(&KEY, 0, 1);
        let mut ex = exit();
        let n = WINDOW as u64 * 3;
        let first: Vec<_> = (1..=n).filter_map(|id| link.send(install(id), 0)).collect();
        assert_eq!(first.len(), WINDOW, "the rest wait");
        assert_eq!(link.pending_len(), n as usize);
        assert!(
            link.refill(0).is_empty(),
            "no room before an acknowledgement"
        );
        let opened: Vec<u64> = first
            .iter()
            .map(|f| ex.open(f).unwrap().session_id())
            .collect();
        assert_eq!(opened, (1..=WINDOW as u64).collect::<Vec<_>>());
        ack(&mut ex, &mut link, 1);
        ack(&mut ex, &mut link, 2);
        let next: Vec<u64> = link
            .refill(0)
            .iter()
            .map(|f| ex.open(f).unwrap().session_id())
            .collect();
        assert_eq!(next, [WINDOW as u64 + 1, WINDOW as u64 + 2], "oldest first");
        // Retransmissions are of sent messages only; queued ones wait their turn.
        let (frames, gave_up) = link.due(RETRY_MS);
        assert!(gave_up.is_empty());
        assert_eq!(frames.len(), WINDOW, "every message in flight, once");
        for id in 3..=n {
            ack(&mut ex, &mut link, id);
            let _ = link.refill(0);
        }
        assert_eq!(link.pending_len(), 0);
        assert!(link.refill(0).is_empty());
    }

    #[test]
    fn forgetting_and_giving_up_free_the_window() {
        let mut link = ExitLink::new(&KEY, 0, 1);
        for id in 1..=WINDOW as u64 + 1 {
            let _ = link.send(install(id), 0);
        }
        link.forget(1);
        assert_eq!(link.refill(0).len(), 1, "a forgotten message made room");
        // A REVOKE replaces the session's pending INSTALL: in flight stays at WINDOW.
        assert!(
            link.send(
                LinkMsg::Revoke {
                    session_id: 2,
                    epoch: 0
                },
                0
            )
            .is_some()
        );
        assert!(link.send(install(9_999), 0).is_none(), "the window is full");
        let mut now = 0;
        let mut gave_up = Vec::new();
        while gave_up.is_empty() {
            now += 60_000;
            gave_up = link.due(now).1;
        }
        assert_eq!(gave_up.len(), WINDOW - 1, "every INSTALL in flight gave up");
        assert!(
            link.pending.contains_key(&(9_999, link_type::INSTALL))
                && link.pending[&(9_999, link_type::INSTALL)].sent,
            "and the queued one went out in the room they left"
        );
    }

    /// A cluster node's frames carry its number; it takes the exit's answers to it
    /// and no other node's.
    #[test]
    fn a_node_sends_and_accepts_its_own_number_only() {
        let mut link = ExitLink::new(&KEY, 3, 1);
        let mut ex = exit();
        let f = link.send(install(1), 0).expect("sent");
        let (node, msg) = ex.open_node(&f).unwrap();
        assert_eq!((node, msg.session_id()), (3, 1));
        let ack = LinkMsg::Ack {
            session_id: 1,
            acked_type: link_type::INSTALL,
        };
        assert!(link.receive(&ex.seal_for(4, &ack)).is_err(), "node 4's");
        assert!(matches!(
            link.receive(&ex.seal_for(3, &ack)),
            Ok(Some(LinkEvent::InstallAcked(1)))
        ));
    }
}
