//! The client core driven by hand, with the gateway's side of the protocol built from
//! `proto`: rebinding on "not bound", what must not trigger it, end-to-end liveness,
//! and the tunnel MTU.

use std::net::IpAddr;

use ring::{hmac, rand::SystemRandom};

use super::{Core, Out};
use crate::{
    client::{config::ClientConfig, health::Status},
    control::api::EventRecord,
    proto::{
        self, Body, Control, Established, Hint, ReattachCause, SessionKeys, Unverified,
        control::{ACK_FROM_BINDING, keepalive_ack},
        handshake::{Hello, tests::keypair, welcome},
    },
    session::{Reason, State},
};

const T0: u64 = 1_700_000_000_000;
const SID: u64 = 0x5e55_1011;
const HINT: Hint = Hint {
    recovery_window_ms: 10_000,
    keepalive_interval_ms: 100,
    transport_loss_ttl_ms: 500,
    session_ttl_s: 3_600,
};
const WIFI: usize = 0;
const LTE: usize = 1;

/// The gateway's half: keys and its control counter.
struct Gw {
    keys: SessionKeys,
    mac: hmac::Key,
    ctr: u64,
}

impl Gw {
    fn ack(&mut self, ts: u64, generation: u32, fwd: u32, flags: u8) -> Vec<u8> {
        self.ctr += 1;
        keepalive_ack(&self.mac, SID, self.ctr, ts, generation, fwd, flags)
    }

    fn send(&mut self, body: Body) -> Vec<u8> {
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

fn config(gw_pub: &[u8; 32]) -> ClientConfig {
    ClientConfig::parse(&format!(
        "identity = \"/nonexistent\"\ngateway_public_key = \"{}\"\n\
         [[transport]]\nname = \"wifi\"\nkind = \"wifi\"\nbind = \"10.0.0.2:40000\"\n\
         gateway = \"10.0.0.1:51820\"\n\
         [[transport]]\nname = \"lte\"\nkind = \"cellular\"\nbind = \"10.0.1.2:40000\"\n\
         gateway = \"10.0.1.1:51820\"\n",
        hex::encode(gw_pub)
    ))
    .unwrap()
}

fn udp(core: &mut Core) -> Vec<(usize, Vec<u8>)> {
    std::mem::take(&mut core.out)
        .into_iter()
        .filter_map(|o| match o {
            Out::Udp { transport, data } => Some((transport, data)),
            _ => None,
        })
        .collect()
}

/// Client messages on `t`, decoded (the client MACs with the same key).
fn sent_on(out: &[(usize, Vec<u8>)], t: usize) -> Vec<Control> {
    out.iter()
        .filter(|(i, _)| *i == t)
        .filter_map(|(_, d)| Unverified::decode(d).ok().map(Unverified::into_msg))
        .collect()
}

/// An established session over Wi-Fi.
fn established() -> (Core, Gw) {
    let (gw_id, cl_id) = (keypair(), keypair());
    let gw_pub = proto::identity::public_key(&gw_id);
    let mut core = Core::new(&config(&gw_pub), cl_id, gw_pub, T0);
    let hello = udp(&mut core).remove(0).1;
    let v = Hello::decode(&hello)
        .unwrap()
        .verify_signature(&gw_pub)
        .unwrap();
    let tunnel: IpAddr = "10.99.0.2".parse().unwrap();
    let w = welcome(&gw_id, &v, SID, 1, tunnel, HINT, T0, &SystemRandom::new()).unwrap();
    core.on_datagram(WIFI, &w.welcome, T0 + 1);
    let mac = w.keys.mac_key();
    core.on_datagram(
        WIFI,
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
    core.on_datagram(WIFI, &gw.ack(ts, 1, 0, 0), T0 + 10);
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
    core.on_datagram(WIFI, &ack, T0 + 12);
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
    core.on_datagram(WIFI, &forged, T0 + 10);
    // Stale: answered before a switch the client has since made (generation 0 < 1).
    core.on_datagram(WIFI, &gw.ack(ts_wifi, 0, 0, 0), T0 + 11);
    // Standby: LTE is not the binding, and hearing so is its normal health.
    core.on_datagram(LTE, &gw.ack(ts_lte, 1, 0, 0), T0 + 12);
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
fn inner(len: usize) -> Vec<u8> {
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
    core.on_datagram(WIFI, &gw.ack(ts, 1, 500, ACK_FROM_BINDING), T0 + 5);
    let mut now = T0 + 5;
    for round in 0..3 {
        for _ in 0..10 {
            core.on_tun(&inner(100));
        }
        now += 100;
        core.tick(now);
        let ts = last_keepalive(&udp(&mut core), WIFI);
        // The relay forwarded round 0's ten (500 → 510), then none.
        core.on_datagram(WIFI, &gw.ack(ts, 1, 510, ACK_FROM_BINDING), now + 1);
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
    core.on_datagram(WIFI, &gw.ack(probe.0, 1, 0, ACK_FROM_BINDING), T0 + 4);
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
