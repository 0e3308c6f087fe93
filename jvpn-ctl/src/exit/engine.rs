//! Per-packet decisions, without I/O: link frames in → ACKs out, gateway DATA in →
//! inner packets for the TUN device, TUN packets in → sealed DATA for the gateway.
//! Every drop is counted by reason.

use std::{net::SocketAddr, sync::Arc};

use ipnet::IpNet;

use super::{
    counters::{Counters, add, bump},
    inner,
    sessions::{Installed, Sessions},
};
use crate::proto::{
    ProtoError, data,
    link::{Dir, LinkCrypto, LinkMsg},
};

pub(crate) struct Engine {
    sessions: Sessions,
    link: LinkCrypto,
    counters: Arc<Counters>,
}

impl Engine {
    /// `link_start` is the link counter start (microseconds since the epoch).
    pub fn new(link_key: &[u8; 32], link_start: u64, pool: IpNet, counters: Arc<Counters>) -> Self {
        Engine {
            sessions: Sessions::new(pool),
            link: LinkCrypto::new(link_key, Dir::ExitToGateway, link_start),
            counters,
        }
    }

    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// A link frame; returns the ACK frame to send back to its source, if any.
    pub fn on_link(&mut self, frame: &[u8], from: SocketAddr) -> Option<Vec<u8>> {
        let c = &*self.counters;
        let msg = match self.link.open(frame) {
            Ok(m) => m,
            Err(e) => {
                bump(&c.link_bad_frames);
                tracing::debug!(%from, error = %e, "link frame dropped");
                return None;
            }
        };
        let acked_type = msg.type_code();
        let session_id = match msg {
            LinkMsg::Install {
                session_id,
                tunnel_addr,
                c2x,
                x2c,
                ret,
            } => match self
                .sessions
                .install(session_id, tunnel_addr, &c2x, &x2c, ret)
            {
                Ok(how) => {
                    bump(&c.link_installs);
                    match how {
                        Installed::New => tracing::info!(
                            session = format_args!("{session_id:#018x}"),
                            %tunnel_addr, %ret, "session installed"
                        ),
                        Installed::Rekeyed => tracing::warn!(
                            session = format_args!("{session_id:#018x}"),
                            %tunnel_addr, %ret, "session re-installed with new keys; counters reset"
                        ),
                        Installed::Repeat => tracing::debug!(
                            session = format_args!("{session_id:#018x}"),
                            "repeated INSTALL acknowledged again"
                        ),
                    }
                    session_id
                }
                Err(why) => {
                    bump(&c.link_refused);
                    tracing::warn!(
                        session = format_args!("{session_id:#018x}"),
                        "INSTALL refused, not acknowledged: {why}"
                    );
                    return None;
                }
            },
            LinkMsg::Revoke { session_id } => {
                bump(&c.link_revokes);
                if self.sessions.revoke(session_id) {
                    tracing::info!(
                        session = format_args!("{session_id:#018x}"),
                        "session revoked"
                    );
                }
                session_id
            }
            LinkMsg::Ack { session_id, .. } => {
                bump(&c.link_unexpected);
                tracing::debug!(
                    %from, session = format_args!("{session_id:#018x}"),
                    "unexpected ACK on the link"
                );
                return None;
            }
        };
        Some(self.link.seal(&LinkMsg::Ack {
            session_id,
            acked_type,
        }))
    }

    /// DATA from the gateway; returns the inner packet to write to the TUN device.
    pub fn on_data<'a>(&mut self, pkt: &'a mut [u8]) -> Option<&'a [u8]> {
        let c = &*self.counters;
        let Ok(sid) = data::peek_session(pkt) else {
            bump(&c.data_malformed);
            return None;
        };
        let Some(s) = self.sessions.get_mut(sid) else {
            bump(&c.data_unknown_session);
            return None;
        };
        let (_, ctr, plain) = match data::open(&s.c2x, pkt) {
            Ok(v) => v,
            Err(ProtoError::Decrypt) => {
                bump(&c.data_bad_tag);
                return None;
            }
            Err(_) => {
                bump(&c.data_malformed);
                return None;
            }
        };
        if !s.replay.update(ctr) {
            bump(&c.data_replay);
            return None;
        }
        let Some((src, _)) = inner::addrs(plain) else {
            bump(&c.data_bad_inner);
            return None;
        };
        if src != s.tunnel_addr {
            bump(&c.data_spoofed);
            tracing::debug!(
                session = format_args!("{sid:#018x}"), %src,
                "spoofed inner source dropped"
            );
            return None;
        }
        Some(plain)
    }

    /// Counts a packet written to the TUN device (or a failed write).
    pub fn delivered(&self, res: std::io::Result<usize>) {
        let c = &*self.counters;
        match res {
            Ok(n) => {
                bump(&c.data_in);
                add(&c.data_in_bytes, n);
            }
            Err(e) => {
                bump(&c.tun_write_errors);
                tracing::debug!(error = %e, "TUN write failed");
            }
        }
    }

    /// A packet read from the TUN device: seals it into `out` for its session and
    /// returns where to send it.
    pub fn on_tun(&mut self, pkt: &[u8], out: &mut Vec<u8>) -> Option<SocketAddr> {
        let c = &*self.counters;
        let Some((_, dst)) = inner::addrs(pkt) else {
            bump(&c.tun_bad_packet);
            return None;
        };
        if dst.is_multicast() {
            bump(&c.tun_multicast);
            return None;
        }
        let Some(s) = self.sessions.by_addr_mut(dst) else {
            bump(&c.tun_no_session);
            return None;
        };
        let Some(ctr) = s.take_counter() else {
            bump(&c.tun_counter_exhausted);
            return None;
        };
        data::seal(&s.x2c, s.id, ctr, pkt, out);
        Some(s.ret)
    }

    /// Counts a DATA packet sent to the gateway (or a failed send).
    pub fn sent(&self, inner_len: usize, res: std::io::Result<usize>) {
        let c = &*self.counters;
        match res {
            Ok(_) => {
                bump(&c.data_out);
                add(&c.data_out_bytes, inner_len);
            }
            Err(e) => {
                bump(&c.send_errors);
                tracing::debug!(error = %e, "DATA send failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    const LINK_KEY: [u8; 32] = [7; 32];
    const SID: u64 = 0x1122_3344_5566_7788;
    const C2X: [u8; 32] = [1; 32];
    const X2C: [u8; 32] = [2; 32];

    fn gw() -> SocketAddr {
        "10.77.9.1:51820".parse().unwrap()
    }

    fn setup() -> (Engine, LinkCrypto, Arc<Counters>) {
        let counters = Arc::new(Counters::default());
        let e = Engine::new(
            &LINK_KEY,
            1000,
            "10.99.0.1/24".parse().unwrap(),
            counters.clone(),
        );
        (
            e,
            LinkCrypto::new(&LINK_KEY, Dir::GatewayToExit, 5000),
            counters,
        )
    }

    fn install(tunnel: &str) -> LinkMsg {
        LinkMsg::Install {
            session_id: SID,
            tunnel_addr: tunnel.parse().unwrap(),
            c2x: C2X,
            x2c: X2C,
            ret: gw(),
        }
    }

    /// A minimal IPv4 header (no payload) from `src` to `dst`.
    fn ipv4(src: &str, dst: &str) -> Vec<u8> {
        let (IpAddr::V4(s), IpAddr::V4(d)) = (src.parse().unwrap(), dst.parse().unwrap()) else {
            unreachable!()
        };
        let mut p = vec![0u8; 20];
        p[0] = 0x45;
        p[3] = 20;
        p[8] = 64;
        p[12..16].copy_from_slice(&s.octets());
        p[16..20].copy_from_slice(&d.octets());
        p
    }

    fn data(ctr: u64, inner: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        data::seal(&data::DataKey::new(&C2X), SID, ctr, inner, &mut out);
        out
    }

    #[test]
    fn link_install_ack_revoke() {
        let (mut e, mut gw_link, c) = setup();
        let ack = e
            .on_link(&gw_link.seal(&install("10.99.0.2")), gw())
            .unwrap();
        assert_eq!(
            gw_link.open(&ack).unwrap(),
            LinkMsg::Ack {
                session_id: SID,
                acked_type: 1
            }
        );
        // Retransmission: acknowledged again, one session.
        let ack = e
            .on_link(&gw_link.seal(&install("10.99.0.2")), gw())
            .unwrap();
        assert!(matches!(
            gw_link.open(&ack).unwrap(),
            LinkMsg::Ack { acked_type: 1, .. }
        ));
        assert_eq!(e.sessions(), 1);
        // Replayed frame, wrong key, garbage: dropped and counted.
        let frame = gw_link.seal(&LinkMsg::Revoke { session_id: SID });
        let mut wrong = LinkCrypto::new(&[8; 32], Dir::GatewayToExit, 9_000_000);
        assert!(
            e.on_link(&wrong.seal(&LinkMsg::Revoke { session_id: SID }), gw())
                .is_none()
        );
        assert!(e.on_link(b"JVLK garbage", gw()).is_none());
        assert_eq!(e.sessions(), 1);
        let ack = e.on_link(&frame, gw()).unwrap();
        assert_eq!(
            gw_link.open(&ack).unwrap(),
            LinkMsg::Ack {
                session_id: SID,
                acked_type: 2
            }
        );
        assert!(e.on_link(&frame, gw()).is_none(), "replayed link frame");
        assert_eq!(e.sessions(), 0);
        let s = c.snapshot();
        assert_eq!(
            (s.link_installs, s.link_revokes, s.link_bad_frames),
            (2, 1, 3)
        );
    }

    #[test]
    fn address_conflict_is_refused_without_ack() {
        let (mut e, mut gw_link, c) = setup();
        e.on_link(&gw_link.seal(&install("10.99.0.2")), gw())
            .unwrap();
        let other = LinkMsg::Install {
            session_id: SID + 1,
            tunnel_addr: "10.99.0.2".parse().unwrap(),
            c2x: [3; 32],
            x2c: [4; 32],
            ret: gw(),
        };
        assert!(e.on_link(&gw_link.seal(&other), gw()).is_none());
        assert_eq!(c.snapshot().link_refused, 1);
        assert_eq!(e.sessions(), 1);
    }

    #[test]
    fn data_in_checks() {
        let (mut e, mut gw_link, c) = setup();
        let good = ipv4("10.99.0.2", "10.99.0.1");
        assert!(e.on_data(&mut data(1, &good)).is_none(), "no session yet");
        e.on_link(&gw_link.seal(&install("10.99.0.2")), gw())
            .unwrap();

        let pkt = data(1, &good);
        assert_eq!(e.on_data(&mut pkt.clone()), Some(&good[..]));
        assert!(e.on_data(&mut pkt.clone()).is_none(), "replay");
        let mut forged = data(2, &good);
        *forged.last_mut().unwrap() ^= 1;
        assert!(e.on_data(&mut forged).is_none(), "forged tag");
        // The forged packet did not move the window: counter 2 is still good.
        assert!(e.on_data(&mut data(2, &good)).is_some());
        assert!(
            e.on_data(&mut data(3, &ipv4("10.99.0.9", "10.99.0.1")))
                .is_none()
        );
        assert!(e.on_data(&mut data(4, b"\x00not ip")).is_none());
        assert!(e.on_data(&mut [0u8; 10]).is_none());

        let s = c.snapshot();
        assert_eq!(
            (
                s.data_unknown_session,
                s.data_replay,
                s.data_bad_tag,
                s.data_spoofed,
                s.data_bad_inner,
                s.data_malformed
            ),
            (1, 1, 1, 1, 1, 1)
        );
    }

    #[test]
    fn tun_out_seals_for_the_session() {
        let (mut e, mut gw_link, c) = setup();
        e.on_link(&gw_link.seal(&install("10.99.0.2")), gw())
            .unwrap();
        let reply = ipv4("10.99.0.1", "10.99.0.2");
        let mut out = Vec::new();
        for want in 1..=2u64 {
            assert_eq!(e.on_tun(&reply, &mut out), Some(gw()));
            let (sid, ctr, plain) = data::open(&data::DataKey::new(&X2C), &mut out).unwrap();
            assert_eq!((sid, ctr, plain), (SID, want, &reply[..]));
        }
        assert!(
            e.on_tun(&ipv4("10.99.0.1", "10.99.0.3"), &mut out)
                .is_none()
        );
        assert!(e.on_tun(b"junk", &mut out).is_none());
        assert!(
            e.on_tun(&ipv4("10.99.0.1", "224.0.0.22"), &mut out)
                .is_none()
        );
        let s = c.snapshot();
        assert_eq!(
            (s.tun_no_session, s.tun_bad_packet, s.tun_multicast),
            (1, 1, 1)
        );
    }
}
