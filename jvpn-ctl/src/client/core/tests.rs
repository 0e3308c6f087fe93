//! The client core driven by hand, with the gateway's side of the protocol built from
//! `proto`: rebinding on "not bound", what must not trigger it, end-to-end liveness,
//! the tunnel MTU, transports with several gateway addresses (cluster nodes), and
//! the gateway's TIME and COOKIE answers to a HELLO (what they may and may not
//! change).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};

use ring::{hmac, rand::SystemRandom};

use super::{Core, LinkSignal, Out};
use crate::{
    client::{config::ClientConfig, health::Status},
    control::api::EventRecord,
    proto::{
        self, Body, Control, Cookie, Established, Hint, ReattachCause, ReattachRequest,
        SessionKeys, Time, Unverified,
        control::{ACK_FROM_BINDING, keepalive_ack},
        handshake::{Hello, tests::keypair, welcome},
    },
    session::{Detail, Reason, State},
};

pub(super) const T0: u64 = 1_700_000_000_000;
pub(super) const SID: u64 = 0x5e55_1011;
pub(super) const HINT: Hint = Hint {
    recovery_window_ms: 10_000,
    keepalive_interval_ms: 100,
    transport_loss_ttl_ms: 500,
    session_ttl_s: 3_600,
};
pub(super) const WIFI: usize = 0;
pub(super) const LTE: usize = 1;
/// The gateway addresses of the two transports of [`TRANSPORTS`].
pub(super) const WIFI_GW: SocketAddr = v4([10, 0, 0, 1], 51820);
pub(super) const LTE_GW: SocketAddr = v4([10, 0, 1, 1], 51820);

pub(super) const fn v4(ip: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(
        Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]),
        port,
    ))
}

/// Wi-Fi and LTE, one gateway address each.
pub(super) const TRANSPORTS: &str = "[[transport]]\nname = \"wifi\"\nkind = \"wifi\"\nbind = \"10.0.0.2:40000\"\n\
     gateway = \"10.0.0.1:51820\"\n\
     [[transport]]\nname = \"lte\"\nkind = \"cellular\"\nbind = \"10.0.1.2:40000\"\n\
     gateway = \"10.0.1.1:51820\"\n";

/// The gateway's half: keys and its control counter.
pub(super) struct Gw {
    keys: SessionKeys,
    mac: hmac::Key,
    ctr: u64,
}

impl Gw {
    /// The gateway's half of a session with `keys`, its counter at `ctr`.
    pub(super) fn new(keys: SessionKeys, ctr: u64) -> Self {
        let mac = keys.mac_key();
        Self { keys, mac, ctr }
    }

    pub(super) fn ack(&mut self, ts: u64, generation: u32, fwd: u32, flags: u8) -> Vec<u8> {
        self.ctr += 1;
        keepalive_ack(&self.mac, SID, self.ctr, ts, generation, fwd, flags)
    }

    pub(super) fn send(&mut self, body: Body) -> Vec<u8> {
        self.ctr += 1;
        Control {
            session_id: SID,
            ctr: self.ctr,
            body,
        }
        .encode(&self.mac)
        .unwrap()
    }
}

pub(super) fn config(gw_pub: &[u8; 32], transports: &str) -> ClientConfig {
    let c = ClientConfig::parse(&format!(
        "identity = \"/nonexistent\"\ngateway_public_key = \"{}\"\n{transports}",
        hex::encode(gw_pub)
    ))
    .unwrap();
    c.validate().unwrap();
    c
}

/// What the core sent: (transport, gateway address, bytes).
fn udp_to(core: &mut Core) -> Vec<(usize, SocketAddr, Vec<u8>)> {
    std::mem::take(&mut core.out)
        .into_iter()
        .filter_map(|o| match o {
            Out::Udp {
                transport,
                to,
                data,
            } => Some((transport, to, data)),
            _ => None,
        })
        .collect()
}

fn udp(core: &mut Core) -> Vec<(usize, Vec<u8>)> {
    udp_to(core).into_iter().map(|(t, _, d)| (t, d)).collect()
}

/// Client messages on `t`, decoded (the client MACs with the same key).
fn sent_on(out: &[(usize, Vec<u8>)], t: usize) -> Vec<Control> {
    out.iter()
        .filter(|(i, _)| *i == t)
        .filter_map(|(_, d)| Unverified::decode(d).ok().map(Unverified::into_msg))
        .collect()
}

/// An established session over Wi-Fi.
pub(super) fn established() -> (Core, Gw) {
    established_with(TRANSPORTS)
}

/// An established session over the first of `transports`, at its first address.
fn established_with(transports: &str) -> (Core, Gw) {
    established_dual(transports, None)
}

/// As [`established_with`], from a gateway that gives `tunnel6` beside 10.99.0.2.
fn established_dual(transports: &str, tunnel6: Option<std::net::Ipv6Addr>) -> (Core, Gw) {
    let (gw_id, cl_id) = (keypair(), keypair());
    let gw_pub = proto::identity::public_key(&gw_id);
    let mut core = Core::new(&config(&gw_pub, transports), cl_id, gw_pub, T0);
    let (t, to, hello) = udp_to(&mut core).remove(0);
    assert_eq!(t, WIFI);
    let v = Hello::decode(&hello)
        .unwrap()
        .verify_signature(&gw_pub)
        .unwrap();
    let tunnel: IpAddr = "10.99.0.2".parse().unwrap();
    let w = welcome(
        &gw_id,
        &v,
        SID,
        1,
        tunnel,
        tunnel6,
        HINT,
        T0,
        &SystemRandom::new(),
    )
    .unwrap();
    core.on_datagram(WIFI, to, &w.welcome, T0 + 1);
    let mac = w.keys.mac_key();
    core.on_datagram(
        WIFI,
        to,
        &Established::build(&mac, SID, 2, &w.transcript),
        T0 + 2,
    );
    let s = core.status(T0 + 2);
    assert_eq!((s.state, s.generation), (State::Attached, 1));
    (
        core,
        Gw {
            keys: w.keys,
            mac,
            ctr: 2,
        },
    )
}

/// The timestamp of the latest KEEPALIVE the core sent on `t`.
fn last_keepalive(out: &[(usize, Vec<u8>)], t: usize) -> u64 {
    sent_on(out, t)
        .iter()
        .rev()
        .find_map(|m| match m.body {
            Body::Keepalive { ts_ms, pad: 0 } => Some(ts_ms),
            _ => None,
        })
        .expect("a keepalive")
}

fn reasons(core: &mut Core) -> Vec<Reason> {
    core.out
        .iter()
        .filter_map(|o| match o {
            Out::Event(EventRecord::StateChange { reason, .. }) => Some(*reason),
            _ => None,
        })
        .collect()
}

#[test]
fn not_bound_on_the_bound_transport_rebinds_over_it() {
    let (mut core, mut gw) = established();
    let out = udp(&mut core);
    let ts = last_keepalive(&out, WIFI);
    core.on_datagram(WIFI, WIFI_GW, &gw.ack(ts, 1, 0, 0), T0 + 10);
    assert!(reasons(&mut core).contains(&Reason::AddressChanged));
    let out = udp(&mut core);
    let req = sent_on(&out, WIFI)
        .into_iter()
        .find_map(|m| match m.body {
            Body::ReattachRequest(r) => Some(r),
            _ => None,
        })
        .expect("a REATTACH_REQUEST over the same transport");
    assert_eq!(req.cause, ReattachCause::AddressChanged);
    let s = core.status(T0 + 10);
    assert_eq!(s.state, State::Recovering);
    assert!(s.transports[WIFI].not_bound);
    assert_eq!(s.counters.rebinds, 1);

    // CHALLENGE → CONFIRM → ACK over Wi-Fi: generation 2, still Wi-Fi.
    let challenge = [7u8; 16];
    core.on_datagram(
        WIFI,
        WIFI_GW,
        &gw.send(Body::ReattachChallenge { challenge }),
        T0 + 11,
    );
    let out = udp(&mut core);
    assert!(
        sent_on(&out, WIFI)
            .iter()
            .any(|m| m.body == Body::ReattachConfirm { challenge })
    );
    let ack = gw.send(Body::ReattachAck {
        generation: 2,
        hint: HINT,
    });
    core.on_datagram(WIFI, WIFI_GW, &ack, T0 + 12);
    let s = core.status(T0 + 12);
    assert_eq!((s.state, s.generation), (State::Attached, 2));
    assert_eq!(s.bound.as_deref(), Some("wifi"));
    assert!(!s.transports[WIFI].not_bound);
    let sw = s.last_switch.unwrap();
    assert_eq!((sw.from.as_str(), sw.to.as_str()), ("wifi", "wifi"));
    assert_eq!(sw.cause, "address changed");
    let _ = gw.keys;
}

#[test]
fn forged_stale_or_standby_not_bound_is_no_rebinding() {
    let (mut core, mut gw) = established();
    let out = udp(&mut core);
    let (ts_wifi, ts_lte) = (last_keepalive(&out, WIFI), last_keepalive(&out, LTE));
    // Forged: another key.
    let other = SessionKeys::derive(&[1; 32], &[2; 32]).mac_key();
    let forged = keepalive_ack(&other, SID, 99, ts_wifi, 1, 0, 0);
    core.on_datagram(WIFI, WIFI_GW, &forged, T0 + 10);
    // Stale: answered before a switch the client has since made (generation 0 < 1).
    core.on_datagram(WIFI, WIFI_GW, &gw.ack(ts_wifi, 0, 0, 0), T0 + 11);
    // Standby: LTE is not the binding, and hearing so is its normal health.
    core.on_datagram(LTE, LTE_GW, &gw.ack(ts_lte, 1, 0, 0), T0 + 12);
    let security = core
        .out
        .iter()
        .filter(|o| matches!(o, Out::Event(EventRecord::SecurityEvent { .. })))
        .count();
    assert_eq!(security, 1, "the forged answer is a security event");
    let out = udp(&mut core);
    assert!(
        !out.iter()
            .any(|(_, d)| d[1] == jvpn_common::wire::msg_type::REATTACH_REQUEST)
    );
    let s = core.status(T0 + 12);
    assert_eq!(s.state, State::Attached);
    assert_eq!((s.counters.rebinds, s.counters.not_bound_signals), (0, 0));
    assert_eq!(s.counters.ctl_rejected, 1);
    assert!(
        s.transports[LTE].rtt_ms.is_some(),
        "standby answer is health"
    );
}

/// An IPv4/UDP packet of `len` bytes (DF set) for the TUN.
pub(super) fn inner(len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[6] = 0x40;
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&[10, 99, 0, 2]);
    p[16..20].copy_from_slice(&[10, 99, 0, 1]);
    let sum = jvpn_common::csum::ipv4_header(p[..20].try_into().unwrap());
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p
}

#[test]
fn data_the_relay_does_not_forward_makes_the_binding_stalled() {
    let (mut core, mut gw) = established();
    let ts = last_keepalive(&udp(&mut core), WIFI);
    core.on_datagram(WIFI, WIFI_GW, &gw.ack(ts, 1, 500, ACK_FROM_BINDING), T0 + 5);
    let mut now = T0 + 5;
    for round in 0..3 {
        for _ in 0..10 {
            core.on_tun(&inner(100));
        }
        now += 100;
        core.tick(now);
        let ts = last_keepalive(&udp(&mut core), WIFI);
        // The relay forwarded round 0's ten (500 → 510), then none.
        core.on_datagram(
            WIFI,
            WIFI_GW,
            &gw.ack(ts, 1, 510, ACK_FROM_BINDING),
            now + 1,
        );
        core.tick(now + 2);
        let s = core.status(now + 2);
        if round == 0 {
            assert!(!s.transports[WIFI].stalled);
            assert_eq!(s.transports[WIFI].health, Status::Healthy);
        } else {
            assert!(s.transports[WIFI].stalled, "round {round}");
            assert_ne!(s.transports[WIFI].health, Status::Healthy);
        }
    }
}

/// Only packets from the session's own tunnel addresses are sealed: a dual-stack
/// session's IPv4 and IPv6 ones; anything else (IPv6 link-local chatter, another
/// source) is dropped and counted.
#[test]
fn only_the_tunnel_addresses_are_sealed() {
    let a6: std::net::Ipv6Addr = "fd00:99::2".parse().unwrap();
    let (mut core, _gw) = established_dual(TRANSPORTS, Some(a6));
    assert!(
        core.out
            .contains(&Out::TunUp("10.99.0.2".parse().unwrap(), Some(a6)))
    );
    assert_eq!(
        core.status(T0 + 2).tunnel_addr6.as_deref(),
        Some("fd00:99::2")
    );
    let _ = udp(&mut core);
    let v6 = |src: std::net::Ipv6Addr| {
        let mut p = vec![0u8; 48];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&8u16.to_be_bytes());
        p[6] = 17;
        p[7] = 64;
        p[8..24].copy_from_slice(&src.octets());
        p[24..40].copy_from_slice(&"fd00:99::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
        p
    };
    core.on_tun(&inner(100));
    core.on_tun(&v6(a6));
    assert_eq!(udp(&mut core).len(), 2, "both families sealed");
    let mut other = inner(100);
    other[15] = 9;
    core.on_tun(&other);
    core.on_tun(&v6("fe80::1".parse().unwrap()));
    core.on_tun(&[0x45; 10]);
    assert!(udp(&mut core).is_empty());
    let c = core.status(T0 + 3).counters;
    assert_eq!((c.tx_foreign_source, c.tx_packets), (3, 2));
}

#[test]
fn tunnel_mtu_follows_the_probed_path_and_oversized_packets_get_icmp() {
    let (mut core, mut gw) = established();
    let _ = udp(&mut core);
    assert_eq!(
        core.status(T0).tunnel_mtu,
        1200 - 64,
        "base until confirmed"
    );
    core.set_path_max(WIFI, 1500, T0 + 3);
    core.tick(T0 + 3);
    let out = udp(&mut core);
    let probe = sent_on(&out, WIFI)
        .into_iter()
        .find_map(|m| match m.body {
            Body::Keepalive { ts_ms, pad } if pad > 0 => Some((ts_ms, pad)),
            _ => None,
        })
        .expect("a path-MTU probe");
    let probe_len = out
        .iter()
        .find(|(t, d)| *t == WIFI && d.len() > 100)
        .unwrap()
        .1
        .len();
    assert_eq!(probe_len + 28, 1500, "probe fills the route MTU");
    core.on_datagram(
        WIFI,
        WIFI_GW,
        &gw.ack(probe.0, 1, 0, ACK_FROM_BINDING),
        T0 + 4,
    );
    assert!(
        core.out.contains(&Out::TunMtu(1400)),
        "capped by mtu = 1400"
    );
    let s = core.status(T0 + 4);
    assert_eq!((s.tunnel_mtu, s.transports[WIFI].path_mtu), (1400, 1500));

    // A DF packet over the tunnel MTU: ICMP back into the TUN, nothing sent.
    core.out.clear();
    core.on_tun(&inner(1450));
    let icmp = match core.out.as_slice() {
        [Out::Tun(p)] => p.clone(),
        o => panic!("{o:?}"),
    };
    assert_eq!((icmp[20], icmp[21]), (3, 4), "fragmentation needed");
    assert_eq!(u16::from_be_bytes([icmp[26], icmp[27]]), 1400);
    assert_eq!(core.status(T0 + 4).counters.tx_too_big, 1);

    // EMSGSIZE on the path: the kernel says 1400 now.
    core.out.clear();
    core.note_too_big(WIFI, 1472, Some(1400), T0 + 5);
    assert!(core.out.contains(&Out::TunMtu(1336)));
}

// ---------------------------------------------------------------------------------
// Several gateway addresses per transport (the nodes of one cluster)

const NODE_A: SocketAddr = v4([10, 0, 0, 1], 51820);
const NODE_B: SocketAddr = v4([10, 0, 0, 9], 51820);

/// Another node of the same cluster: the same session keys (it took the session over
/// from the shared store), its own control counter (from its own start time, in µs).
fn other_node(gw: &Gw, ctr: u64) -> Gw {
    Gw {
        keys: SessionKeys::derive(&[0; 32], &[0; 32]),
        mac: gw.mac.clone(),
        ctr,
    }
}

/// The REATTACH_REQUESTs in `out`: (transport, address, request).
fn requests(out: &[(usize, SocketAddr, Vec<u8>)]) -> Vec<(usize, SocketAddr, ReattachRequest)> {
    out.iter()
        .filter_map(
            |(t, to, d)| match Unverified::decode(d).ok()?.into_msg().body {
                Body::ReattachRequest(r) => Some((*t, *to, r)),
                _ => None,
            },
        )
        .collect()
}

/// The timestamp of the latest plain KEEPALIVE sent on `t` to `to`.
fn keepalive_to(out: &[(usize, SocketAddr, Vec<u8>)], t: usize, to: SocketAddr) -> Option<u64> {
    out.iter()
        .rev()
        .filter(|(i, a, _)| *i == t && *a == to)
        .find_map(
            |(_, _, d)| match Unverified::decode(d).ok()?.into_msg().body {
                Body::Keepalive { ts_ms, pad: 0 } => Some(ts_ms),
                _ => None,
            },
        )
}

/// CHALLENGE → CONFIRM → ACK from `node` at `addr` over `t`: the reattach completes.
fn complete_reattach(core: &mut Core, node: &mut Gw, t: usize, addr: SocketAddr, now: u64) {
    let challenge = [9u8; 16];
    core.on_datagram(
        t,
        addr,
        &node.send(Body::ReattachChallenge { challenge }),
        now,
    );
    let out = udp_to(core);
    assert!(
        out.iter().any(|(i, to, d)| *i == t
            && *to == addr
            && Unverified::decode(d).unwrap().into_msg().body
                == Body::ReattachConfirm { challenge }),
        "CONFIRM to {addr}"
    );
    let ack = node.send(Body::ReattachAck {
        generation: 2,
        hint: HINT,
    });
    core.on_datagram(t, addr, &ack, now + 1);
}

#[test]
fn a_silent_node_moves_the_transport_to_the_next_and_the_session_reattaches_there() {
    let (mut core, gw_a) = established_with(
        "[[transport]]\nname = \"wifi\"\nkind = \"wifi\"\nbind = \"10.0.0.2:40000\"\n\
         gateways = [\"10.0.0.1:51820\", \"10.0.0.9:51820\"]\n",
    );
    let mut gw_b = other_node(&gw_a, 9_000_000_000_000);
    let s = core.status(T0 + 2);
    assert_eq!(s.transports[WIFI].gateway, NODE_A.to_string());
    assert_eq!(
        s.transports[WIFI].gateways,
        [NODE_A.to_string(), NODE_B.to_string()]
    );
    assert_eq!(s.bound_gateway.as_deref(), Some("10.0.0.1:51820"));

    // Node A dies: nothing answers. After the loss TTL the transport moves to B.
    let ttl = u64::from(HINT.transport_loss_ttl_ms);
    let mut now = T0 + 2;
    let out = loop {
        now += 10;
        core.tick(now);
        let out = udp_to(&mut core);
        if core.status(now).transports[WIFI].gateway != NODE_A.to_string() {
            break out;
        }
        assert!(now < T0 + 2 + ttl + 100, "no move");
    };
    assert!(now >= T0 + 2 + ttl, "not before the TTL");
    let s = core.status(now);
    assert!(
        s.transports[WIFI]
            .gateway_moved
            .as_deref()
            .is_some_and(|m| m.starts_with("10.0.0.9:51820 (silent")),
        "{:?}",
        s.transports[WIFI].gateway_moved
    );
    assert_eq!(s.counters.gateway_moves, 1);
    // (A keepalive due in this tick may have left for A before the move.)
    let after: Vec<_> = out.iter().skip_while(|(_, to, _)| *to == NODE_A).collect();
    assert!(
        !after.is_empty() && after.iter().all(|(_, to, _)| *to == NODE_B),
        "{out:?}"
    );
    // The binding is at A: the session reattaches over the same transport, to B.
    let req = requests(&out);
    assert_eq!(req.len(), 1, "{req:?}");
    assert_eq!((req[0].0, req[0].1), (WIFI, NODE_B));
    assert_eq!(req[0].2.cause, ReattachCause::Recovery);
    assert_eq!(s.state, State::Recovering);

    // B answers the probe: the transport is healthy there (a standby's "not bound",
    // no rebinding), then the exchange completes.
    let ts = keepalive_to(&out, WIFI, NODE_B).expect("B probed at once");
    core.on_datagram(WIFI, NODE_B, &gw_b.ack(ts, 1, 0, 0), now + 3);
    core.tick(now + 4);
    let s = core.status(now + 4);
    assert_eq!(s.transports[WIFI].health, Status::Healthy);
    assert_eq!(s.counters.rebinds, 0);
    complete_reattach(&mut core, &mut gw_b, WIFI, NODE_B, now + 5);
    let s = core.status(now + 6);
    assert_eq!(s.session_id.map(|i| i.0), Some(SID), "the same session");
    assert_eq!((s.state, s.generation), (State::Attached, 2));
    assert_eq!(s.bound_gateway.as_deref(), Some("10.0.0.9:51820"));
    let sw = s.last_switch.unwrap();
    assert_eq!((sw.from.as_str(), sw.to.as_str()), ("wifi", "wifi"));
    assert_eq!(sw.cause, "recovery");
    assert!(sw.silent_ms >= ttl, "{sw:?}");

    // B is the binding now: its FROM_BINDING answers are health, DATA goes to B.
    let _ = udp_to(&mut core);
    core.tick(now + 200);
    let ts = keepalive_to(&udp_to(&mut core), WIFI, NODE_B).unwrap();
    core.on_datagram(
        WIFI,
        NODE_B,
        &gw_b.ack(ts, 2, 0, ACK_FROM_BINDING),
        now + 201,
    );
    core.tick(now + 202);
    assert_eq!(core.status(now + 202).state, State::Attached);
    core.on_tun(&inner(100));
    assert!(udp_to(&mut core).iter().all(|(_, to, _)| *to == NODE_B));
    assert_eq!(core.status(now + 202).counters.ctl_rejected, 0);
}

#[test]
fn ownership_ambiguous_moves_the_candidate_on_and_it_retries_at_once() {
    // Wi-Fi (one address) is bound; LTE knows two nodes, C and D.
    const NODE_C: SocketAddr = v4([10, 0, 1, 1], 51820);
    const NODE_D: SocketAddr = v4([10, 0, 1, 9], 51820);
    let (mut core, mut gw) = established_with(
        "[[transport]]\nname = \"wifi\"\nkind = \"wifi\"\nbind = \"10.0.0.2:40000\"\n\
         gateway = \"10.0.0.1:51820\"\n\
         [[transport]]\nname = \"lte\"\nkind = \"cellular\"\nbind = \"10.0.1.2:40000\"\n\
         gateways = [\"10.0.1.1:51820\", \"10.0.1.9:51820\"]\n",
    );
    let mut gw_d = other_node(&gw, 1_000_000_000_000);
    // Wi-Fi goes silent; LTE's probes are answered (by C) the whole time.
    let mut now = T0 + 2;
    let req = loop {
        now += 10;
        core.tick(now);
        let out = udp_to(&mut core);
        if let Some(ts) = keepalive_to(&out, LTE, NODE_C) {
            core.on_datagram(LTE, NODE_C, &gw.ack(ts, 1, 0, 0), now + 1);
        }
        if let Some(r) = requests(&out).pop() {
            break r;
        }
        assert!(now < T0 + 1_000, "no reattach");
    };
    assert_eq!((req.0, req.1), (LTE, NODE_C));
    // C: another node owns the session and is alive.
    let denied = gw.send(Body::denied(Detail::OwnershipAmbiguous));
    core.on_datagram(LTE, NODE_C, &denied, now + 5);
    let s = core.status(now + 5);
    assert_eq!(s.transports[LTE].gateway, NODE_D.to_string());
    assert!(
        s.transports[LTE]
            .gateway_moved
            .as_deref()
            .is_some_and(|m| m.contains("ownership_ambiguous")),
        "{:?}",
        s.transports[LTE].gateway_moved
    );
    assert_eq!(
        s.transports[LTE].backoff_ms, 0,
        "the next node is tried at once"
    );
    assert_eq!(s.state, State::Degraded);
    let _ = udp_to(&mut core);
    core.tick(now + 10);
    let req = requests(&udp_to(&mut core));
    assert_eq!(req.len(), 1, "{req:?}");
    assert_eq!((req[0].0, req[0].1), (LTE, NODE_D));
    complete_reattach(&mut core, &mut gw_d, LTE, NODE_D, now + 11);
    let s = core.status(now + 12);
    assert_eq!((s.state, s.generation), (State::Attached, 2));
    assert_eq!(s.session_id.map(|i| i.0), Some(SID));
    assert_eq!(s.bound.as_deref(), Some("lte"));
    assert_eq!(s.bound_gateway.as_deref(), Some("10.0.1.9:51820"));
}

#[test]
fn ownership_ambiguous_from_every_address_backs_off() {
    let (mut core, mut gw) = established_with(
        "[[transport]]\nname = \"wifi\"\nkind = \"wifi\"\nbind = \"10.0.0.2:40000\"\n\
         gateway = \"10.0.0.1:51820\"\n\
         [[transport]]\nname = \"lte\"\nkind = \"cellular\"\nbind = \"10.0.1.2:40000\"\n\
         gateways = [\"10.0.1.1:51820\", \"10.0.1.9:51820\"]\n",
    );
    let mut addrs = Vec::new();
    let mut now = T0 + 2;
    for _ in 0..2 {
        // A planned move (`client move`) is not retried by itself: ask each time. It is
        // served once the session is back in ATTACHED (Wi-Fi is healthy).
        core.request_move("lte").unwrap();
        let (t, to, _) = loop {
            now += 10;
            core.tick(now);
            if let Some(r) = requests(&udp_to(&mut core)).pop() {
                break r;
            }
            assert!(now < T0 + 100, "no request");
        };
        assert_eq!(t, LTE);
        addrs.push(to);
        let denied = gw.send(Body::denied(Detail::OwnershipAmbiguous));
        core.on_datagram(LTE, to, &denied, now + 1);
    }
    assert_eq!(addrs, [v4([10, 0, 1, 1], 51820), v4([10, 0, 1, 9], 51820)]);
    let s = core.status(now + 1);
    assert_eq!(
        s.transports[LTE].gateway, "10.0.1.1:51820",
        "wrapped around"
    );
    assert!(s.transports[LTE].backoff_ms > 0, "both refused: back off");
}

#[test]
fn replies_from_two_nodes_with_unrelated_counters_are_all_accepted() {
    // Wi-Fi's node (A) counts from 2; LTE's (another node) from far above. One
    // shared 64-wide window would refuse everything from A after LTE's first answer.
    let (mut core, mut a) = established();
    let mut b = other_node(&a, 1_700_000_000_000_000);
    let mut now = T0 + 2;
    let (mut last_a, mut last_b) = (Vec::new(), Vec::new());
    for round in 0..5 {
        now += u64::from(HINT.keepalive_interval_ms);
        core.tick(now);
        let out = udp_to(&mut core);
        let (ta, tb) = (
            keepalive_to(&out, WIFI, WIFI_GW).unwrap(),
            keepalive_to(&out, LTE, LTE_GW).unwrap(),
        );
        last_b = b.ack(tb, 1, 0, 0);
        last_a = a.ack(ta, 1, round, ACK_FROM_BINDING);
        // Interleaved, in either order.
        if round % 2 == 0 {
            core.on_datagram(LTE, LTE_GW, &last_b, now + 1);
            core.on_datagram(WIFI, WIFI_GW, &last_a, now + 2);
        } else {
            core.on_datagram(WIFI, WIFI_GW, &last_a, now + 1);
            core.on_datagram(LTE, LTE_GW, &last_b, now + 2);
        }
    }
    core.tick(now + 3);
    let s = core.status(now + 3);
    assert_eq!(s.counters.ctl_rejected, 0);
    assert_eq!(s.state, State::Attached);
    assert_eq!(s.transports[WIFI].health, Status::Healthy);
    assert_eq!(s.transports[LTE].health, Status::Healthy);
    // Still refused: a duplicate from the same address, and a reply replayed under
    // another address (the MAC does not cover the source).
    core.out.clear();
    core.on_datagram(WIFI, WIFI_GW, &last_a, now + 4);
    core.on_datagram(WIFI, WIFI_GW, &last_b, now + 5);
    let replays: Vec<_> = core
        .out
        .iter()
        .filter_map(|o| match o {
            Out::Event(EventRecord::SecurityEvent { source, kind, .. }) => {
                Some((source.clone(), kind.clone()))
            }
            _ => None,
        })
        .collect();
    let want = (WIFI_GW.to_string(), "replay".to_owned());
    assert_eq!(replays, [want.clone(), want]);
    assert_eq!(core.status(now + 5).counters.ctl_rejected, 2);
}

#[test]
fn an_unanswered_hello_goes_to_the_next_address_and_confirm_follows_the_welcome() {
    let (gw_id, cl_id) = (keypair(), keypair());
    let gw_pub = proto::identity::public_key(&gw_id);
    let cfg = config(
        &gw_pub,
        "[[transport]]\nname = \"wifi\"\nkind = \"wifi\"\nbind = \"10.0.0.2:40000\"\n\
         gateways = [\"10.0.0.1:51820\", \"10.0.0.9:51820\"]\n\
         [[transport]]\nname = \"lte\"\nkind = \"cellular\"\nbind = \"10.0.1.2:40000\"\n\
         gateway = \"10.0.1.1:51820\"\n",
    );
    let mut core = Core::new(&cfg, cl_id, gw_pub, T0);
    let mut hellos = vec![udp_to(&mut core).remove(0)];
    for i in 1..4 {
        core.tick(T0 + i * 1_000);
        hellos.push(udp_to(&mut core).remove(0));
    }
    let to: Vec<_> = hellos.iter().map(|(t, a, _)| (*t, *a)).collect();
    assert_eq!(
        to,
        [
            (WIFI, NODE_A),
            (WIFI, NODE_B),
            (WIFI, NODE_A),
            (LTE, LTE_GW)
        ],
        "every address once, then the next transport"
    );
    // Node B answers the second HELLO late: CONFIRM goes to B, the binding is there.
    let v = Hello::decode(&hellos[1].2)
        .unwrap()
        .verify_signature(&gw_pub)
        .unwrap();
    let tunnel: IpAddr = "10.99.0.2".parse().unwrap();
    let w = welcome(
        &gw_id,
        &v,
        SID,
        1,
        tunnel,
        None,
        HINT,
        T0,
        &SystemRandom::new(),
    )
    .unwrap();
    core.on_datagram(WIFI, NODE_B, &w.welcome, T0 + 3_100);
    let out = udp_to(&mut core);
    assert_eq!((out[0].0, out[0].1), (WIFI, NODE_B), "CONFIRM to B");
    let est = Established::build(&w.keys.mac_key(), SID, 2, &w.transcript);
    core.on_datagram(WIFI, NODE_B, &est, T0 + 3_101);
    let s = core.status(T0 + 3_101);
    assert_eq!(s.state, State::Attached);
    assert_eq!(s.bound_gateway.as_deref(), Some("10.0.0.9:51820"));
    assert_eq!(s.transports[WIFI].gateway, NODE_B.to_string());
}

// ---------------------------------------------------------------------------------
// TIME and COOKIE

/// A core whose first HELLO (over Wi-Fi) is waiting, and the gateway's identity.
fn connecting() -> (Core, ring::signature::Ed25519KeyPair, Vec<u8>) {
    let (gw_id, cl_id) = (keypair(), keypair());
    let gw_pub = proto::identity::public_key(&gw_id);
    let mut core = Core::new(&config(&gw_pub, TRANSPORTS), cl_id, gw_pub, T0);
    let (t, to, hello) = udp_to(&mut core).remove(0);
    assert_eq!((t, to), (WIFI, WIFI_GW));
    (core, gw_id, hello)
}

/// The gateway's TIME (its time `gw_ms`) for `hello`, signed by `id`.
fn time_for(id: &ring::signature::Ed25519KeyPair, hello: &[u8], gw_ms: u64) -> Vec<u8> {
    let v = Hello::decode(hello)
        .unwrap()
        .verify_signature(&proto::identity::public_key(id))
        .unwrap();
    Time::build(id, &v, 9, gw_ms)
}

fn hellos(core: &mut Core) -> Vec<(usize, SocketAddr, Hello)> {
    udp_to(core)
        .into_iter()
        .filter_map(|(t, a, d)| Hello::decode(&d).ok().map(|h| (t, a, h)))
        .collect()
}

#[test]
fn a_time_is_taken_once_and_forged_or_foreign_ones_change_nothing() {
    let (mut core, gw_id, hello) = connecting();
    let now = T0 + 5;
    let gw_ms = T0 - 61_234;
    // Signed by another key, for another client's HELLO, on the other transport,
    // truncated: nothing changes, nothing is sent.
    let other = keypair();
    let (_, foreign) = proto::ClientHandshake::start(
        &keypair(),
        &proto::identity::public_key(&gw_id),
        T0,
        &SystemRandom::new(),
    )
    .unwrap();
    let good = time_for(&gw_id, &hello, gw_ms);
    let mut forged = good.clone();
    forged[30] ^= 1;
    // Our HELLO, answered with the right nonce but signed by another key.
    let v = Hello::decode(&hello)
        .unwrap()
        .verify_signature(&proto::identity::public_key(&gw_id))
        .unwrap();
    let impostor = Time::build(&other, &v, 9, gw_ms);
    for (t, bad) in [
        (WIFI, forged),
        (WIFI, impostor),
        (WIFI, time_for(&gw_id, &foreign, gw_ms)),
        (LTE, good.clone()),
        (WIFI, good[..good.len() - 1].to_vec()),
    ] {
        let from = if t == WIFI { WIFI_GW } else { LTE_GW };
        core.on_datagram(t, from, &bad, now);
        assert!(udp_to(&mut core).is_empty(), "nothing sent");
    }
    let s = core.status(now);
    assert_eq!((s.counters.time_refused, s.counters.time_replies), (5, 0));
    assert_eq!(s.clock_offset_ms, 0);

    // The real one: the offset, and one new HELLO at once, stamped with it.
    core.on_datagram(WIFI, WIFI_GW, &good, now);
    let again = hellos(&mut core);
    assert_eq!(again.len(), 1);
    let (t, to, h) = &again[0];
    assert_eq!((*t, *to), (WIFI, WIFI_GW));
    assert_eq!(h.ts_ms, now - 61_239);
    assert_ne!(h.nonce, Hello::decode(&hello).unwrap().nonce, "a new nonce");
    let s = core.status(now);
    assert_eq!(s.clock_offset_ms, gw_ms as i64 - now as i64);
    assert_eq!(s.counters.time_replies, 1);

    // The same TIME again (a replay, or a duplicate): its HELLO was consumed.
    core.on_datagram(WIFI, WIFI_GW, &good, now + 1);
    assert!(udp_to(&mut core).is_empty(), "one TIME, one HELLO");
    assert_eq!(core.status(now + 1).counters.time_refused, 6);
    // The timer's HELLO carries the offset too.
    core.tick(T0 + 1_010);
    let h = hellos(&mut core);
    assert_eq!(h[0].2.ts_ms, T0 + 1_010 - 61_239);
}

#[test]
fn a_gateway_that_keeps_answering_time_gets_a_bounded_number_of_hellos() {
    let (mut core, gw_id, mut hello) = connecting();
    let mut sent = 0;
    for i in 0..10 {
        core.on_datagram(
            WIFI,
            WIFI_GW,
            &time_for(&gw_id, &hello, T0 - 60_000),
            T0 + i,
        );
        match hellos(&mut core).pop() {
            Some((_, _, h)) => {
                sent += 1;
                hello = h.bytes().to_vec();
            }
            None => break,
        }
    }
    assert_eq!(
        sent,
        super::QUICK_HELLOS,
        "then the next waits for the timer"
    );
    core.tick(T0 + 1_100);
    assert_eq!(hellos(&mut core).len(), 1, "the timer's HELLO");
}

#[test]
fn a_cookie_goes_with_every_later_hello_until_replaced_or_rebound() {
    let (mut core, _gw_id, first) = connecting();
    let nonce = |b: &[u8]| Hello::decode(b).unwrap().nonce;
    // A COOKIE for a nonce we never sent, and one on the other transport: nothing.
    core.on_datagram(WIFI, WIFI_GW, &Cookie::build(&[7; 16], &[1; 16]), T0 + 1);
    core.on_datagram(
        LTE,
        LTE_GW,
        &Cookie::build(&nonce(&first), &[1; 16]),
        T0 + 1,
    );
    assert!(udp_to(&mut core).is_empty());
    assert_eq!(core.status(T0 + 1).counters.cookie_refused, 2);

    let cookie = Cookie::build(&nonce(&first), &[1; 16]);
    core.on_datagram(WIFI, WIFI_GW, &cookie, T0 + 2);
    let h = hellos(&mut core);
    assert_eq!(h.len(), 1, "one HELLO at once");
    assert_eq!(h[0].2.bytes().len(), 188);
    assert_eq!(h[0].2.cookie, Some([1; 16]));
    // Replayed: its HELLO was consumed.
    core.on_datagram(WIFI, WIFI_GW, &cookie, T0 + 3);
    assert!(udp_to(&mut core).is_empty());
    assert_eq!(core.status(T0 + 3).counters.cookie_refused, 3);
    assert!(core.status(T0 + 3).transports[WIFI].cookie);

    // Unanswered: the timer's HELLO carries it as well.
    core.tick(T0 + 1_010);
    let h = hellos(&mut core);
    assert_eq!(h[0].2.cookie, Some([1; 16]));
    // A newer COOKIE replaces it.
    let second = h[0].2.bytes().to_vec();
    core.on_datagram(
        WIFI,
        WIFI_GW,
        &Cookie::build(&nonce(&second), &[2; 16]),
        T0 + 1_020,
    );
    assert_eq!(hellos(&mut core)[0].2.cookie, Some([2; 16]));
    // A new source address (the socket bound anew): the cookie was for the old one.
    core.on_link(
        WIFI,
        LinkSignal::Rebound(v4([10, 0, 0, 3], 40000)),
        T0 + 1_030,
    );
    assert!(!core.status(T0 + 1_030).transports[WIFI].cookie);
    core.tick(T0 + 2_100);
    let h = hellos(&mut core);
    assert_eq!(h[0].2.cookie, None);
    assert_eq!(h[0].2.bytes().len(), 172);
}

#[test]
fn replies_while_a_session_is_up_change_nothing() {
    let (mut core, _) = established();
    let _ = udp(&mut core);
    core.on_datagram(WIFI, WIFI_GW, &Cookie::build(&[7; 16], &[1; 16]), T0 + 5);
    let mut time = vec![0u8; jvpn_common::wire::TIME_MSG_LEN];
    time[..20].copy_from_slice(
        &jvpn_common::wire::WireHeader::new(jvpn_common::wire::msg_type::TIME, 0, 1).to_bytes(),
    );
    core.on_datagram(WIFI, WIFI_GW, &time, T0 + 5);
    assert!(udp(&mut core).is_empty());
    let s = core.status(T0 + 5);
    assert_eq!((s.counters.cookie_refused, s.counters.time_refused), (1, 1));
    assert_eq!((s.state, s.clock_offset_ms), (State::Attached, 0));
    assert!(!s.transports[WIFI].cookie);
}

// ---------------------------------------------------------------------------------
// Saying why nothing happens

#[test]
fn an_unanswered_handshake_says_what_was_tried_and_the_likely_causes() {
    let (mut core, gw_id, _) = connecting();
    // At first: what is under way, no verdict yet.
    let h = core.status(T0 + 10).handshake.expect("connecting");
    assert_eq!((h.hellos, h.answers), (1, 0));
    assert_eq!(h.transports, ["wifi (to 10.0.0.1:51820)"]);
    assert!(h.likely_causes.is_empty());
    // Silence: HELLOs on Wi-Fi, then LTE; after 3 s the causes, naming our key.
    let mut now = T0;
    let mut last = None;
    while now < T0 + 4_000 {
        now += 10;
        core.tick(now);
        if let Some(x) = udp_to(&mut core).pop() {
            last = Some(x);
        }
    }
    let h = core.status(now).handshake.expect("still connecting");
    assert_eq!(h.hellos, 5, "one at start, one a second");
    assert_eq!(
        h.transports,
        ["wifi (to 10.0.0.1:51820)", "lte (to 10.0.1.1:51820)"]
    );
    let me = proto::identity::public_hex(&core.identity);
    assert_eq!(h.likely_causes.len(), 4, "{:?}", h.likely_causes);
    assert!(h.likely_causes.iter().any(|c| c.contains(&me)));
    assert!(
        h.likely_causes
            .iter()
            .any(|c| c.contains("gateway_public_key"))
    );

    // A TIME answering the newest HELLO: the gateway hears us and the configured
    // key verified it, so only the allow-list is left.
    let (t, from, hello) = last.expect("HELLOs were sent");
    core.on_datagram(t, from, &time_for(&gw_id, &hello, now), now + 1);
    let h = core.status(now + 1).handshake.expect("still connecting");
    assert_eq!(h.answers, 1);
    assert_eq!(h.likely_causes.len(), 1, "{:?}", h.likely_causes);
    assert!(h.likely_causes[0].contains(&me));

    // Established: nothing to explain.
    let (core, _) = established_with(TRANSPORTS);
    assert_eq!(core.status(T0 + 100).handshake, None);
}
