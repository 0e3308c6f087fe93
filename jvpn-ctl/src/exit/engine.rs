//! Per-packet decisions, without I/O: link frames in → ACKs out, gateway DATA in →
//! inner packets for the TUN device, TUN packets in → sealed DATA for the gateway.
//! Every drop is counted by reason.
//!
//! Fencing (docs/protocol.md, "Fencing at the exit"): the exit is the resource the
//! gateway nodes of a cluster take turns owning sessions at, so it checks their
//! fencing tokens. INSTALL and REVOKE below a session's epoch are not obeyed, and DATA
//! is taken only from the return endpoint of the session's current owner.

use std::{net::SocketAddr, sync::Arc};

use ipnet::IpNet;

use super::{
    counters::{Counters, add, bump},
    sessions::{Addrs, Installed, Owner, Refused, Revoked, Sessions},
};
use crate::{
    icmp, inner,
    proto::{
        ProtoError,
        data::{self, tunnel_ctl},
        link::{Dir, LinkCrypto, LinkMsg},
    },
};

/// The largest inner packet a session may be sent: its client's tunnel MTU (its
/// notice), bounded by the path towards the gateway at `ret`.
fn tunnel_mtu(link_mtu: u16, client: Option<u16>, ret: SocketAddr) -> u16 {
    let link = data::inner_mtu(link_mtu, ret.is_ipv6());
    client.map_or(link, |c| c.min(link))
}

/// The same address and port, an IPv4-mapped IPv6 address (a dual-stack socket's view
/// of an IPv4 sender) counting as its IPv4 address, and flow label and scope ignored.
fn same_endpoint(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && a.ip().to_canonical() == b.ip().to_canonical()
}

/// What to do with a packet read from the TUN device.
#[derive(Debug, PartialEq, Eq)]
pub enum FromTun {
    /// Sealed into `out`: send it to this address.
    Send(SocketAddr),
    /// Too big for its session's tunnel: `out` holds the ICMP error to write back
    /// into the TUN, so the sender lowers its path MTU.
    Reply,
    /// Too big, IPv4 without DF: this many sealed fragments, in
    /// [`Engine::fragments_mut`], each to send to the address.
    Fragments(SocketAddr, usize),
    /// Counted and dropped.
    Dropped,
}

pub struct Engine {
    sessions: Sessions,
    link: LinkCrypto,
    /// This process's start (µs): PONG tells the gateway, which re-installs every
    /// session when it changes.
    boot: u64,
    counters: Arc<Counters>,
    /// The kernel's MTU towards the gateway (DF is set on the DATA socket).
    link_mtu: u16,
    /// Sealed fragments of the last [`FromTun::Fragments`]: buffers kept for reuse.
    frags: Vec<Vec<u8>>,
}

impl Engine {
    /// `link_start` is the link counter start (microseconds since the epoch).
    pub fn new(link_key: &[u8; 32], link_start: u64, pool: IpNet, counters: Arc<Counters>) -> Self {
        Self::dual(link_key, link_start, pool, None, counters)
    }

    /// An engine whose tunnel has an IPv6 prefix (`pool6`) beside `pool`.
    pub fn dual(
        link_key: &[u8; 32],
        link_start: u64,
        pool: IpNet,
        pool6: Option<IpNet>,
        counters: Arc<Counters>,
    ) -> Self {
        Engine {
            sessions: Sessions::new(pool, pool6, link_start.saturating_mul(16)),
            // Node 0 is only a default: every answer is sealed for the node asked.
            link: LinkCrypto::new(link_key, Dir::ExitToGateway, 0, link_start),
            boot: link_start,
            counters,
            link_mtu: u16::MAX,
            frags: Vec::new(),
        }
    }

    pub fn return_addrs(&self) -> Vec<SocketAddr> {
        self.sessions.return_addrs()
    }

    /// The route MTU towards the gateway, as the kernel reports it.
    pub fn set_link_mtu(&mut self, mtu: u16) {
        if mtu != self.link_mtu {
            tracing::info!(mtu, "path MTU towards the gateway");
        }
        self.link_mtu = mtu;
    }

    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// A link frame; returns the answer (ACK or PONG) to send back to its source, if
    /// any, sealed for the node that sent the frame.
    pub fn on_link(&mut self, frame: &[u8], from: SocketAddr) -> Option<Vec<u8>> {
        let c = &*self.counters;
        let (node, msg) = match self.link.open_node(frame) {
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
                tunnel6,
                c2x,
                x2c,
                ret,
                epoch,
            } => match self.sessions.install(
                session_id,
                Addrs {
                    addr: tunnel_addr,
                    v6: tunnel6,
                },
                &c2x,
                &x2c,
                ret,
                Owner { node, epoch },
            ) {
                Ok(how) => {
                    bump(&c.link_installs);
                    match how {
                        Installed::New => tracing::info!(
                            session = format_args!("{session_id:#018x}"),
                            %tunnel_addr, tunnel6 = ?tunnel6, %ret, node, epoch, "session installed"
                        ),
                        Installed::Rekeyed => tracing::warn!(
                            session = format_args!("{session_id:#018x}"),
                            %tunnel_addr, tunnel6 = ?tunnel6, %ret, node, epoch,
                            "session re-installed with new keys; counters reset"
                        ),
                        Installed::Repeat => tracing::debug!(
                            session = format_args!("{session_id:#018x}"),
                            %ret, node, epoch,
                            "repeated INSTALL (or a takeover) acknowledged"
                        ),
                        Installed::Replaced { stale } => {
                            bump(&c.link_replaced);
                            tracing::warn!(
                                session = format_args!("{session_id:#018x}"),
                                stale = format_args!("{stale:#018x}"),
                                %tunnel_addr,
                                "session installed; the address's former holder, unknown \
                                 to the gateway now, is forgotten"
                            )
                        }
                    }
                    session_id
                }
                Err(Refused::StaleEpoch { epoch, current }) => {
                    // Debug: a node that lost its sessions may retry many of them.
                    bump(&c.link_stale_epoch);
                    tracing::debug!(
                        session = format_args!("{session_id:#018x}"),
                        node,
                        epoch,
                        current,
                        "INSTALL of a superseded owner refused, not acknowledged"
                    );
                    return None;
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
            LinkMsg::Revoke { session_id, epoch } => {
                match self.sessions.revoke_at(session_id, epoch) {
                    Revoked::Removed => {
                        bump(&c.link_revokes);
                        tracing::info!(
                            session = format_args!("{session_id:#018x}"),
                            node,
                            epoch,
                            "session revoked"
                        );
                    }
                    Revoked::Absent => bump(&c.link_revokes),
                    // Acknowledged all the same, so its sender stops retransmitting.
                    Revoked::Stale { current } => {
                        bump(&c.link_stale_epoch);
                        tracing::debug!(
                            session = format_args!("{session_id:#018x}"),
                            node,
                            epoch,
                            current,
                            "REVOKE of a superseded owner ignored (acknowledged)"
                        );
                    }
                }
                session_id
            }
            // The sessions this node owns here: fewer than it holds makes it
            // re-install them all.
            LinkMsg::Ping { nonce } => {
                return Some(self.link.seal_for(
                    node,
                    &LinkMsg::Pong {
                        nonce,
                        boot: self.boot,
                        sessions: self.sessions.owned_by(node) as u64,
                    },
                ));
            }
            LinkMsg::Pong { .. } => {
                bump(&c.link_unexpected);
                return None;
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
        Some(self.link.seal_for(
            node,
            &LinkMsg::Ack {
                session_id,
                acked_type,
            },
        ))
    }

    /// DATA from the gateway at `from`; returns the inner packet to write to the TUN
    /// device. Only the session's current owner (its return endpoint) is heard.
    pub fn on_data<'a>(&mut self, pkt: &'a mut [u8], from: SocketAddr) -> Option<&'a [u8]> {
        let c = &*self.counters;
        let Ok(sid) = data::peek_session(pkt) else {
            bump(&c.data_malformed);
            return None;
        };
        let Some(s) = self.sessions.get_mut(sid) else {
            bump(&c.data_unknown_session);
            return None;
        };
        // Before decryption: cheap, and a superseded owner's packets never reach the
        // TUN device (the relay sends from the owner's exit-side address, `ret`).
        if !same_endpoint(from, s.ret) {
            bump(&c.data_stale_owner);
            tracing::debug!(
                session = format_args!("{sid:#018x}"), %from, ret = %s.ret,
                "DATA not from the session's owner dropped"
            );
            return None;
        }
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
        if plain.first() == Some(&0) {
            match tunnel_ctl::parse_mtu_notice(plain) {
                // Below IPv4's minimum datagram a notice is nonsense: ignored.
                Some(mtu) if mtu >= 576 => {
                    if s.tunnel_mtu != Some(mtu) {
                        tracing::info!(
                            session = format_args!("{sid:#018x}"),
                            mtu,
                            "client tunnel MTU"
                        );
                    }
                    s.tunnel_mtu = Some(mtu);
                    bump(&c.data_mtu_notices);
                }
                _ => bump(&c.data_bad_inner),
            }
            return None;
        }
        let Some((src, _)) = inner::addrs(plain) else {
            bump(&c.data_bad_inner);
            return None;
        };
        if !s.tunnel.holds(src) {
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
    /// says where to send it. One larger than the session's tunnel MTU (the client's
    /// notice, or the path towards the gateway) is answered like a router would: ICMP
    /// "too big" back into the TUN, or IPv4 fragments without DF.
    pub fn on_tun(&mut self, pkt: &[u8], out: &mut Vec<u8>) -> FromTun {
        let c = &*self.counters;
        let Some((_, dst)) = inner::addrs(pkt) else {
            bump(&c.tun_bad_packet);
            return FromTun::Dropped;
        };
        if dst.is_multicast() {
            bump(&c.tun_multicast);
            return FromTun::Dropped;
        }
        let Some(s) = self.sessions.by_addr_mut(dst) else {
            bump(&c.tun_no_session);
            return FromTun::Dropped;
        };
        let mtu = tunnel_mtu(self.link_mtu, s.tunnel_mtu, s.ret);
        if pkt.len() <= usize::from(mtu) {
            let Some(ctr) = s.take_counter() else {
                bump(&c.tun_counter_exhausted);
                return FromTun::Dropped;
            };
            data::seal(&s.x2c, s.id, ctr, pkt, out);
            return FromTun::Send(s.ret);
        }
        let (frags, mut n) = (&mut self.frags, 0);
        let mut exhausted = false;
        let fitted = icmp::fit(pkt, mtu, out, |f| match s.take_counter() {
            Some(ctr) => {
                if frags.len() == n {
                    frags.push(Vec::with_capacity(usize::from(mtu) + 64));
                }
                data::seal(&s.x2c, s.id, ctr, f, &mut frags[n]);
                n += 1;
            }
            None => exhausted = true,
        });
        match fitted {
            _ if exhausted => {
                bump(&c.tun_counter_exhausted);
                FromTun::Dropped
            }
            icmp::Fitted::Fragmented => {
                bump(&c.tun_fragmented);
                FromTun::Fragments(s.ret, n)
            }
            icmp::Fitted::Replied => {
                bump(&c.tun_too_big);
                FromTun::Reply
            }
            icmp::Fitted::Refused => {
                bump(&c.tun_too_big);
                FromTun::Dropped
            }
            icmp::Fitted::Whole | icmp::Fitted::Dropped => {
                bump(&c.tun_bad_packet);
                FromTun::Dropped
            }
        }
    }

    /// The sealed fragments of the last [`FromTun::Fragments`] (its count first);
    /// the caller may take them (e.g. swap them into a send batch) and leave others
    /// in their place: the buffers are reused for the next fragmented packet.
    pub fn fragments_mut(&mut self, n: usize) -> &mut [Vec<u8>] {
        &mut self.frags[..n]
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
    /// The first DATA counter of the exit built by `setup` (link start 1000 µs).
    const BASE: u64 = 16_000;
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
            LinkCrypto::new(&LINK_KEY, Dir::GatewayToExit, 0, 5000),
            counters,
        )
    }

    fn install(tunnel: &str) -> LinkMsg {
        LinkMsg::Install {
            session_id: SID,
            tunnel_addr: tunnel.parse().unwrap(),
            tunnel6: None,
            c2x: C2X,
            x2c: X2C,
            ret: gw(),
            epoch: 0,
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
        let frame = gw_link.seal(&LinkMsg::Revoke {
            session_id: SID,
            epoch: 0,
        });
        let mut wrong = LinkCrypto::new(&[8; 32], Dir::GatewayToExit, 0, 9_000_000);
        assert!(
            e.on_link(
                &wrong.seal(&LinkMsg::Revoke {
                    session_id: SID,
                    epoch: 0,
                }),
                gw()
            )
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

    /// The gateway allocates the pool: an INSTALL on an address another session
    /// holds replaces it (the holder is one the gateway no longer knows).
    #[test]
    fn install_on_a_held_address_replaces_the_stale_holder() {
        let (mut e, mut gw_link, c) = setup();
        e.on_link(&gw_link.seal(&install("10.99.0.2")), gw())
            .unwrap();
        let other = LinkMsg::Install {
            session_id: SID + 1,
            tunnel_addr: "10.99.0.2".parse().unwrap(),
            tunnel6: None,
            c2x: [3; 32],
            x2c: [4; 32],
            ret: gw(),
            epoch: 0,
        };
        assert!(
            e.on_link(&gw_link.seal(&other), gw()).is_some(),
            "acknowledged"
        );
        assert_eq!(c.snapshot().link_replaced, 1);
        assert_eq!(e.sessions(), 1);
        let mut out = Vec::new();
        assert_eq!(
            e.on_tun(&ipv4("10.99.0.1", "10.99.0.2"), &mut out),
            FromTun::Send(gw())
        );
        let (sid, _, _) = data::open(&data::DataKey::new(&[4; 32]), &mut out).unwrap();
        assert_eq!(sid, SID + 1, "sealed for the new holder");
    }

    /// PING → PONG with the exit's boot and session count.
    #[test]
    fn ping_is_answered_with_boot_and_sessions() {
        let (mut e, mut gw_link, _) = setup();
        e.on_link(&gw_link.seal(&install("10.99.0.2")), gw())
            .unwrap();
        let pong = e
            .on_link(&gw_link.seal(&LinkMsg::Ping { nonce: 9 }), gw())
            .expect("a PONG");
        assert_eq!(
            gw_link.open(&pong).unwrap(),
            LinkMsg::Pong {
                nonce: 9,
                boot: 1000,
                sessions: 1
            }
        );
    }

    #[test]
    fn data_in_checks() {
        let (mut e, mut gw_link, c) = setup();
        let good = ipv4("10.99.0.2", "10.99.0.1");
        assert!(
            e.on_data(&mut data(1, &good), gw()).is_none(),
            "no session yet"
        );
        e.on_link(&gw_link.seal(&install("10.99.0.2")), gw())
            .unwrap();

        let pkt = data(1, &good);
        assert_eq!(e.on_data(&mut pkt.clone(), gw()), Some(&good[..]));
        assert!(e.on_data(&mut pkt.clone(), gw()).is_none(), "replay");
        let mut forged = data(2, &good);
        *forged.last_mut().unwrap() ^= 1;
        assert!(e.on_data(&mut forged, gw()).is_none(), "forged tag");
        // The forged packet did not move the window: counter 2 is still good.
        assert!(e.on_data(&mut data(2, &good), gw()).is_some());
        assert!(
            e.on_data(&mut data(3, &ipv4("10.99.0.9", "10.99.0.1")), gw())
                .is_none()
        );
        assert!(e.on_data(&mut data(4, b"\x00not ip"), gw()).is_none());
        assert!(e.on_data(&mut [0u8; 10], gw()).is_none());

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
        // The first counter is the exit's start (µs) × 16: never reused after a restart.
        for want in BASE..=BASE + 1 {
            assert_eq!(e.on_tun(&reply, &mut out), FromTun::Send(gw()));
            let (sid, ctr, plain) = data::open(&data::DataKey::new(&X2C), &mut out).unwrap();
            assert_eq!((sid, ctr, plain), (SID, want, &reply[..]));
        }
        let dropped = |e: &mut Engine, p: &[u8], out: &mut Vec<u8>| e.on_tun(p, out);
        assert_eq!(
            dropped(&mut e, &ipv4("10.99.0.1", "10.99.0.3"), &mut out),
            FromTun::Dropped
        );
        assert_eq!(dropped(&mut e, b"junk", &mut out), FromTun::Dropped);
        assert_eq!(
            dropped(&mut e, &ipv4("10.99.0.1", "224.0.0.22"), &mut out),
            FromTun::Dropped
        );
        let s = c.snapshot();
        assert_eq!(
            (s.tun_no_session, s.tun_bad_packet, s.tun_multicast),
            (1, 1, 1)
        );
    }

    /// An IPv4 packet of `len` bytes (DF as given) from the exit side to the client.
    fn big(len: usize, df: bool) -> Vec<u8> {
        let mut p = ipv4("10.99.0.1", "10.99.0.2");
        p.resize(len, 0);
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[6] = if df { 0x40 } else { 0 };
        p[9] = 17;
        let sum = jvpn_common::csum::ipv4_header(p[..20].try_into().unwrap());
        p[10..12].copy_from_slice(&sum.to_be_bytes());
        p
    }

    /// After the client's MTU notice, a larger packet towards it is answered with ICMP
    /// into the TUN (DF) or sent as fragments (no DF); the link's MTU bounds it too.
    #[test]
    fn tunnel_mtu_from_the_client_and_the_link() {
        let (mut e, mut gw_link, c) = setup();
        e.on_link(&gw_link.seal(&install("10.99.0.2")), gw())
            .unwrap();
        let mut out = Vec::new();
        assert_eq!(e.on_tun(&big(1400, true), &mut out), FromTun::Send(gw()));
        let mut notice = data(1, &tunnel_ctl::mtu_notice(1336));
        assert!(e.on_data(&mut notice, gw()).is_none(), "not for the TUN");
        assert_eq!(e.on_tun(&big(1336, true), &mut out), FromTun::Send(gw()));
        assert_eq!(e.on_tun(&big(1400, true), &mut out), FromTun::Reply);
        assert_eq!((out[20], out[21]), (3, 4), "ICMP fragmentation needed");
        assert_eq!(u16::from_be_bytes([out[26], out[27]]), 1336);
        assert_eq!(&out[16..20], &[10, 99, 0, 1], "back to the sender");
        match e.on_tun(&big(1400, false), &mut out) {
            FromTun::Fragments(to, n) => {
                assert_eq!((to, n), (gw(), 2));
                for (i, frag) in e.fragments_mut(n).iter_mut().enumerate() {
                    let (_, ctr, plain) = data::open(&data::DataKey::new(&X2C), frag).unwrap();
                    assert!(plain.len() <= 1336 && ctr == BASE + 2 + i as u64);
                }
            }
            o => panic!("{o:?}"),
        }
        // The path towards the gateway is smaller still: it wins.
        e.set_link_mtu(1300);
        assert_eq!(
            e.on_tun(&big(1300 - 64 + 1, true), &mut out),
            FromTun::Reply
        );
        assert_eq!(u16::from_be_bytes([out[26], out[27]]), 1236);
        let mut junk = data(2, &[0, 9, 9, 9]);
        assert!(e.on_data(&mut junk, gw()).is_none());
        let s = c.snapshot();
        assert_eq!(
            (
                s.data_mtu_notices,
                s.tun_too_big,
                s.tun_fragmented,
                s.data_bad_inner
            ),
            (1, 2, 1, 1)
        );
    }

    // Cluster ownership: gateway nodes 1 and 2 share the link key, each with its own
    // exit-side return address.

    fn gw2() -> SocketAddr {
        "10.77.9.3:51820".parse().unwrap()
    }

    fn node(n: u16) -> LinkCrypto {
        LinkCrypto::new(&LINK_KEY, Dir::GatewayToExit, n, 5000)
    }

    fn owned_install(ret: SocketAddr, epoch: u64) -> LinkMsg {
        LinkMsg::Install {
            session_id: SID,
            tunnel_addr: "10.99.0.2".parse().unwrap(),
            tunnel6: None,
            c2x: C2X,
            x2c: X2C,
            ret,
            epoch,
        }
    }

    fn revoke(epoch: u64) -> LinkMsg {
        LinkMsg::Revoke {
            session_id: SID,
            epoch,
        }
    }

    /// Sends `msg` as `link`'s node from `from`; the exit's answer, opened by `link`
    /// (so sealed for its node).
    fn ask(
        e: &mut Engine,
        link: &mut LinkCrypto,
        msg: &LinkMsg,
        from: SocketAddr,
    ) -> Option<LinkMsg> {
        let answer = e.on_link(&link.seal(msg), from)?;
        Some(link.open(&answer).expect("sealed for this node"))
    }

    fn ack(acked_type: u8) -> Option<LinkMsg> {
        Some(LinkMsg::Ack {
            session_id: SID,
            acked_type,
        })
    }

    /// An INSTALL below the session's epoch is refused, unacknowledged and counted,
    /// and changes nothing; the same epoch again is a retransmission.
    #[test]
    fn stale_epoch_install_is_refused_unacked() {
        let (mut e, _, c) = setup();
        let (mut n1, mut n2) = (node(1), node(2));
        assert_eq!(ask(&mut e, &mut n1, &owned_install(gw(), 7), gw()), ack(1));
        assert!(
            e.on_link(&n2.seal(&owned_install(gw2(), 6)), gw2())
                .is_none(),
            "no ACK for a superseded owner"
        );
        assert_eq!(ask(&mut e, &mut n1, &owned_install(gw(), 7), gw()), ack(1));
        let mut out = Vec::new();
        assert_eq!(
            e.on_tun(&ipv4("10.99.0.1", "10.99.0.2"), &mut out),
            FromTun::Send(gw()),
            "return traffic still to the owner"
        );
        let s = c.snapshot();
        assert_eq!(
            (s.link_installs, s.link_stale_epoch, s.link_refused),
            (2, 1, 0)
        );
    }

    /// A takeover: node 2 installs the same keys at a higher epoch from its own return
    /// address. The counters go on, return DATA goes to node 2, and node 1's DATA is
    /// dropped (counted) before decryption, never reaching the TUN.
    #[test]
    fn takeover_moves_ret_and_fences_the_old_owners_data() {
        let (mut e, _, c) = setup();
        let (mut n1, mut n2) = (node(1), node(2));
        let good = ipv4("10.99.0.2", "10.99.0.1");
        let reply = ipv4("10.99.0.1", "10.99.0.2");
        let mut out = Vec::new();
        assert_eq!(ask(&mut e, &mut n1, &owned_install(gw(), 5), gw()), ack(1));
        assert!(e.on_data(&mut data(1, &good), gw()).is_some());
        assert_eq!(e.on_tun(&reply, &mut out), FromTun::Send(gw()));

        assert_eq!(
            ask(&mut e, &mut n2, &owned_install(gw2(), 6), gw2()),
            ack(1)
        );
        assert_eq!(e.sessions(), 1);
        assert_eq!(e.on_tun(&reply, &mut out), FromTun::Send(gw2()));
        let (_, ctr, _) = data::open(&data::DataKey::new(&X2C), &mut out).unwrap();
        assert_eq!(ctr, BASE + 1, "the send counter went on");
        assert!(
            e.on_data(&mut data(1, &good), gw2()).is_none(),
            "replay kept"
        );
        assert_eq!(c.snapshot().data_replay, 1);

        // The old owner's DATA, even authentic and fresh: dropped.
        assert!(e.on_data(&mut data(2, &good), gw()).is_none());
        assert_eq!(c.snapshot().data_stale_owner, 1);
        // Counter 2 was not consumed by the dropped packet.
        assert_eq!(e.on_data(&mut data(2, &good), gw2()), Some(&good[..]));
        // Nor does any other address get in, before any decryption (garbage passes
        // the session lookup and is still counted as the stale owner's).
        let mut junk = data(3, &good);
        *junk.last_mut().unwrap() ^= 1;
        assert!(
            e.on_data(&mut junk, "10.77.9.3:9".parse().unwrap())
                .is_none()
        );
        // Node 1 cannot take it back at its old epoch.
        assert!(e.on_link(&n1.seal(&owned_install(gw(), 5)), gw()).is_none());
        assert_eq!(e.on_tun(&reply, &mut out), FromTun::Send(gw2()));
        let s = c.snapshot();
        assert_eq!(
            (
                s.data_stale_owner,
                s.data_bad_tag,
                s.link_stale_epoch,
                s.link_installs
            ),
            (2, 0, 1, 2)
        );
    }

    /// An IPv4 owner seen through a dual-stack socket (IPv4-mapped) is the owner.
    #[test]
    fn owner_check_sees_through_ipv4_mapped_addresses() {
        let (mut e, mut gw_link, c) = setup();
        e.on_link(&gw_link.seal(&install("10.99.0.2")), gw())
            .unwrap();
        let mapped: SocketAddr = "[::ffff:10.77.9.1]:51820".parse().unwrap();
        let good = ipv4("10.99.0.2", "10.99.0.1");
        assert!(e.on_data(&mut data(1, &good), mapped).is_some());
        let other_port: SocketAddr = "10.77.9.1:51821".parse().unwrap();
        assert!(e.on_data(&mut data(2, &good), other_port).is_none());
        assert_eq!(c.snapshot().data_stale_owner, 1);
    }

    /// A REVOKE below the session's epoch is acknowledged (its sender must stop
    /// retransmitting) but the session stays; one at the current epoch removes it.
    #[test]
    fn stale_revoke_is_acked_and_ignored() {
        let (mut e, _, c) = setup();
        let (mut n1, mut n2) = (node(1), node(2));
        assert_eq!(ask(&mut e, &mut n1, &owned_install(gw(), 5), gw()), ack(1));
        assert_eq!(
            ask(&mut e, &mut n2, &owned_install(gw2(), 6), gw2()),
            ack(1)
        );
        assert_eq!(ask(&mut e, &mut n1, &revoke(5), gw()), ack(2));
        assert_eq!(e.sessions(), 1);
        let good = ipv4("10.99.0.2", "10.99.0.1");
        assert!(e.on_data(&mut data(1, &good), gw2()).is_some());
        let s = c.snapshot();
        assert_eq!((s.link_stale_epoch, s.link_revokes), (1, 0));
        assert_eq!(ask(&mut e, &mut n2, &revoke(6), gw2()), ack(2));
        assert_eq!(e.sessions(), 0);
        assert_eq!(c.snapshot().link_revokes, 1);
    }

    /// PONG counts the sessions the asking node owns, sealed for that node.
    #[test]
    fn pong_counts_the_asking_nodes_sessions() {
        let (mut e, _, _) = setup();
        let (mut n1, mut n2) = (node(1), node(2));
        for (sid, addr) in [(SID, "10.99.0.2"), (SID + 1, "10.99.0.3")] {
            let m = LinkMsg::Install {
                session_id: sid,
                tunnel_addr: addr.parse().unwrap(),
                tunnel6: None,
                c2x: C2X,
                x2c: X2C,
                ret: gw(),
                epoch: 1,
            };
            assert!(e.on_link(&n1.seal(&m), gw()).is_some());
        }
        assert_eq!(
            ask(&mut e, &mut n2, &owned_install(gw2(), 2), gw2()),
            ack(1)
        );
        let mut pong = |link: &mut LinkCrypto, nonce| {
            let f = e
                .on_link(&link.seal(&LinkMsg::Ping { nonce }), gw())
                .expect("a PONG");
            match link.open(&f).unwrap() {
                LinkMsg::Pong {
                    nonce: n, sessions, ..
                } if n == nonce => sessions,
                m => panic!("{m:?}"),
            }
        };
        assert_eq!(pong(&mut n1, 1), 1, "node 2 took one over");
        assert_eq!(pong(&mut n2, 2), 1);
        assert_eq!(pong(&mut node(3), 3), 0);
        assert_eq!(e.sessions(), 2);
    }
}
