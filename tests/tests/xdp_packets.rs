//! The XDP relay, packet by packet, through `BPF_PROG_TEST_RUN` in a namespace whose
//! FIB and neighbour table are set up by the test (so next hops and MACs are exact).
//! Every case checks the XDP action and the exact output bytes; relayed frames are
//! also checked with an independent checksum implementation (etherparse).

use std::net::IpAddr;

use jvpn_common::{
    counters,
    maps::{FLAG_FORWARDING, SessionEntry},
    wire::msg_type,
};
use jvpn_ctl::datapath::{Datapath, DatapathConfig, Drops, RELAY_PROGRAM};
use jvpn_tests::{
    frames::{Udp, jvpn, verify_checksums},
    require_root,
    testrun::{XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX, run, try_run},
};

use jvpn_tests::packet_lab::*;

fn load(lab: &Lab) -> Datapath {
    Datapath::load(DatapathConfig {
        port: PORT,
        max_sessions: 4096,
        pin_dir: lab.pins.0.clone(),
        debug_log: false,
    })
    .expect("load the XDP object")
}

fn session(
    client: IpAddr,
    cport: u16,
    gw_client: IpAddr,
    exit: IpAddr,
    gw_exit: IpAddr,
) -> SessionEntry {
    SessionEntry {
        generation: 1,
        flags: FLAG_FORWARDING,
        client: ep(client, cport),
        gw_client: ep(gw_client, PORT),
        exit: ep(exit, EXIT_PORT),
        gw_exit: ep(gw_exit, PORT),
        ..Default::default()
    }
}

const S_V4: u64 = 0x1111_0000_0000_0001;
const S_V6: u64 = 0x2222_0000_0000_0002;
const S_4TO6: u64 = 0x3333_0000_0000_0003;
const S_6TO4: u64 = 0x4444_0000_0000_0004;
const S_OFF: u64 = 0x5555_0000_0000_0005;
const S_NONEIGH: u64 = 0x6666_0000_0000_0006;
const S_LAN: u64 = 0x7777_0000_0000_0007;
const S_NOROUTE: u64 = 0x8888_0000_0000_0008;

fn install_sessions(dp: &mut Datapath) {
    let (c4, g4c, x4, g4x) = (
        v4("10.10.1.2"),
        v4("10.10.1.1"),
        v4("10.10.9.2"),
        v4("10.10.9.1"),
    );
    let (c6, g6c, x6, g6x) = (
        v6("fd00:1::2"),
        v6("fd00:1::1"),
        v6("fd00:9::2"),
        v6("fd00:9::1"),
    );
    let mut off = session(c4, 40005, g4c, x4, g4x);
    off.flags = 0;
    for (id, e) in [
        (S_V4, session(c4, 40000, g4c, x4, g4x)),
        (S_V6, session(c6, 40001, g6c, x6, g6x)),
        (S_4TO6, session(c4, 40002, g4c, x6, g6x)),
        (S_6TO4, session(c6, 40003, g6c, x4, g4x)),
        (S_OFF, off),
        (S_NONEIGH, session(c4, 40006, g4c, v4("10.10.9.77"), g4x)),
        (S_LAN, session(c4, 40007, g4c, v4("10.10.1.9"), g4c)),
        (S_NOROUTE, session(c4, 40008, g4c, v4("192.0.2.1"), g4x)),
    ] {
        dp.insert_session(id, &e).unwrap();
    }
}

fn delta(before: &Drops, after: &Drops) -> Vec<(&'static str, u64)> {
    before
        .iter()
        .zip(after)
        .enumerate()
        .filter(|(_, (b, a))| a != b)
        .map(|(i, (b, a))| (counters::name(i as u32), a - b))
        .collect()
}

/// One relay case: a frame in, the exact frame expected out.
struct Relay {
    name: &'static str,
    ingress: Udp,
    payload: Vec<u8>,
    expect: Udp,
    via_x0: bool,
    action: u32,
}

fn relay_cases(lab: &Lab) -> Vec<Relay> {
    let _ = lab;
    let data = |sid| jvpn(msg_type::DATA, sid, 9, 100);
    let up = |name, sid, cport, src: IpAddr, dst: IpAddr, exit: IpAddr, gw_exit: IpAddr| Relay {
        name,
        ingress: Udp::new(src, cport, dst, PORT),
        payload: data(sid),
        expect: Udp::relayed(X0_MAC, EXIT_MAC, gw_exit, PORT, exit, EXIT_PORT, 0),
        via_x0: false,
        action: XDP_REDIRECT,
    };
    let down =
        |name, sid, cport, client: IpAddr, gw_client: IpAddr, exit: IpAddr, gw_exit: IpAddr| {
            Relay {
                name,
                ingress: Udp::new(exit, EXIT_PORT, gw_exit, PORT),
                payload: data(sid),
                expect: Udp::relayed(C0_MAC, CLIENT_MAC, gw_client, PORT, client, cport, 0),
                via_x0: true,
                action: XDP_REDIRECT,
            }
        };
    let (c4, g4c, x4, g4x) = (
        v4("10.10.1.2"),
        v4("10.10.1.1"),
        v4("10.10.9.2"),
        v4("10.10.9.1"),
    );
    let (c6, g6c, x6, g6x) = (
        v6("fd00:1::2"),
        v6("fd00:1::1"),
        v6("fd00:9::2"),
        v6("fd00:9::1"),
    );
    let mut cases = vec![
        up("ipv4 up", S_V4, 40000, c4, g4c, x4, g4x),
        down("ipv4 down", S_V4, 40000, c4, g4c, x4, g4x),
        up("ipv6 up", S_V6, 40001, c6, g6c, x6, g6x),
        down("ipv6 down", S_V6, 40001, c6, g6c, x6, g6x),
        up(
            "ipv4 binding, ipv6 exit: up",
            S_4TO6,
            40002,
            c4,
            g4c,
            x6,
            g6x,
        ),
        down(
            "ipv4 binding, ipv6 exit: down",
            S_4TO6,
            40002,
            c4,
            g4c,
            x6,
            g6x,
        ),
        up(
            "ipv6 binding, ipv4 exit: up",
            S_6TO4,
            40003,
            c6,
            g6c,
            x4,
            g4x,
        ),
        down(
            "ipv6 binding, ipv4 exit: down",
            S_6TO4,
            40003,
            c6,
            g6c,
            x4,
            g4x,
        ),
    ];
    let mut vlan = up("vlan-tagged ipv4 up", S_V4, 40000, c4, g4c, x4, g4x);
    vlan.ingress.vlan = Some(42);
    let mut opts = up("ipv4 with options up", S_V4, 40000, c4, g4c, x4, g4x);
    // NOP, NOP, NOP, EOL: 4 bytes of options (IHL 6); the relay sends none.
    opts.ingress.ipv4_options = vec![1, 1, 1, 0];
    let mut tos = up(
        "tos carried over, ipv4 -> ipv6",
        S_4TO6,
        40002,
        c4,
        g4c,
        x6,
        g6x,
    );
    tos.ingress.tos = 0xb8;
    tos.expect.tos = 0xb8;
    let mut nocsum = up(
        "ipv4 without udp checksum stays without",
        S_V4,
        40000,
        c4,
        g4c,
        x4,
        g4x,
    );
    nocsum.ingress.no_udp_checksum = true;
    nocsum.expect.no_udp_checksum = true;
    let mut lan = up(
        "exit on the ingress lan: XDP_TX",
        S_LAN,
        40007,
        c4,
        g4c,
        v4("10.10.1.9"),
        g4c,
    );
    lan.expect = Udp::relayed(
        C0_MAC,
        LAN_EXIT_MAC,
        g4c,
        PORT,
        v4("10.10.1.9"),
        EXIT_PORT,
        0,
    );
    lan.action = XDP_TX;
    cases.extend([vlan, opts, tos, nocsum, lan]);
    cases
}

#[test]
fn relays_every_family_combination_with_exact_bytes() {
    require_root!();
    let lab = lab();
    lab.ns.run(|| {
        let mut dp = load(&lab);
        install_sessions(&mut dp);
        let cases = relay_cases(&lab);
        for c in &cases {
            let before = dp.drops().unwrap();
            let frame = c.ingress.build(&c.payload);
            let ifindex = if c.via_x0 { lab.x0 } else { lab.c0 };
            let r = run(dp.program(RELAY_PROGRAM).unwrap(), &frame, ifindex);
            assert_eq!(r.action, c.action, "{}: action", c.name);
            let want = c.expect.build(&c.payload);
            assert_eq!(r.out, want, "{}: output bytes", c.name);
            assert_eq!(verify_checksums(&r.out), c.payload, "{}: payload", c.name);
            assert!(
                delta(&before, &dp.drops().unwrap()).is_empty(),
                "{}: no drop counted",
                c.name
            );
        }
        // Per-session counters: S_V4 relayed up 4 times (plain, vlan, options, no
        // checksum) and down once, 120 payload bytes each.
        let s = dp.session_stats(S_V4).unwrap().unwrap();
        assert_eq!((s.up_packets, s.down_packets), (4, 1));
        assert_eq!((s.up_bytes, s.down_bytes), (480, 120));
    });
}

/// A frame that must not be relayed: expected action, counter, and (for PASS) proof
/// that the kernel gets the frame untouched.
fn rejected(
    dp: &mut Datapath,
    ifindex: u32,
    name: &str,
    frame: &[u8],
    action: u32,
    counter: Option<u32>,
) {
    let before = dp.drops().unwrap();
    let r = run(dp.program(RELAY_PROGRAM).unwrap(), frame, ifindex);
    assert_eq!(r.action, action, "{name}: action");
    assert_eq!(r.out, frame, "{name}: frame must be untouched");
    let d = delta(&before, &dp.drops().unwrap());
    match counter {
        Some(c) => assert_eq!(d, vec![(counters::name(c), 1)], "{name}: counters"),
        None => assert!(d.is_empty(), "{name}: nothing counted, got {d:?}"),
    }
}

#[test]
fn rejects_and_passes_by_rule() {
    require_root!();
    let lab = lab();
    lab.ns.run(|| {
        let mut dp = load(&lab);
        install_sessions(&mut dp);
        let (c4, g4c, x4, g4x) = (
            v4("10.10.1.2"),
            v4("10.10.1.1"),
            v4("10.10.9.2"),
            v4("10.10.9.1"),
        );
        let from_client = |port| Udp::new(c4, port, g4c, PORT);
        let c0 = lab.c0;

        // Stale binding: right session, wrong address or port; counted per session too.
        let other = Udp::new(v4("10.10.1.3"), 40000, g4c, PORT);
        rejected(
            &mut dp,
            c0,
            "stale address",
            &other.build(&jvpn(msg_type::DATA, S_V4, 1, 64)),
            XDP_DROP,
            Some(counters::STALE_BINDING),
        );
        rejected(
            &mut dp,
            c0,
            "stale port",
            &from_client(40099).build(&jvpn(msg_type::DATA, S_V4, 1, 64)),
            XDP_DROP,
            Some(counters::STALE_BINDING),
        );
        assert_eq!(dp.session_stats(S_V4).unwrap().unwrap().stale_drops, 2);
        // Another session's binding is not this session's binding.
        rejected(
            &mut dp,
            c0,
            "other session's binding",
            &from_client(40001).build(&jvpn(msg_type::DATA, S_V4, 1, 64)),
            XDP_DROP,
            Some(counters::STALE_BINDING),
        );

        let unknown = 0xdead_beef_u64;
        rejected(
            &mut dp,
            c0,
            "data, unknown session",
            &from_client(40000).build(&jvpn(msg_type::DATA, unknown, 1, 64)),
            XDP_DROP,
            Some(counters::UNKNOWN_SESSION),
        );
        rejected(
            &mut dp,
            c0,
            "reattach, unknown session",
            &from_client(40000).build(&jvpn(msg_type::REATTACH_REQUEST, unknown, 1, 120)),
            XDP_DROP,
            Some(counters::UNKNOWN_SESSION),
        );
        rejected(
            &mut dp,
            c0,
            "not forwarding",
            &from_client(40005).build(&jvpn(msg_type::DATA, S_OFF, 1, 64)),
            XDP_DROP,
            Some(counters::NOT_FORWARDING),
        );

        // Control: HELLO always, others only for known sessions; untouched, uncounted.
        rejected(
            &mut dp,
            c0,
            "hello",
            &from_client(40000).build(&jvpn(msg_type::HELLO, 0, 1, 152)),
            XDP_PASS,
            None,
        );
        for t in [
            msg_type::REATTACH_REQUEST,
            msg_type::REATTACH_CONFIRM,
            msg_type::KEEPALIVE,
            msg_type::CLOSE,
            msg_type::CONFIRM,
        ] {
            // From anywhere: a reattach comes from a new address by definition.
            let f = Udp::new(v4("10.10.1.3"), 5555, g4c, PORT).build(&jvpn(t, S_V4, 1, 80));
            rejected(
                &mut dp,
                c0,
                "control for a known session",
                &f,
                XDP_PASS,
                None,
            );
        }

        rejected(
            &mut dp,
            c0,
            "bad version",
            &{
                let mut p = jvpn(msg_type::DATA, S_V4, 1, 64);
                p[0] = 2;
                from_client(40000).build(&p)
            },
            XDP_DROP,
            Some(counters::BAD_VERSION),
        );
        rejected(
            &mut dp,
            c0,
            "unknown type",
            &from_client(40000).build(&jvpn(0x7e, S_V4, 1, 64)),
            XDP_DROP,
            Some(counters::UNKNOWN_TYPE),
        );
        rejected(
            &mut dp,
            c0,
            "data with session 0",
            &from_client(40000).build(&jvpn(msg_type::DATA, 0, 1, 64)),
            XDP_DROP,
            Some(counters::BAD_SESSION_ID),
        );
        rejected(
            &mut dp,
            c0,
            "hello with a session",
            &from_client(40000).build(&jvpn(msg_type::HELLO, 7, 1, 64)),
            XDP_DROP,
            Some(counters::BAD_SESSION_ID),
        );

        // Not ours: other port, other protocol, other ethertype.
        rejected(
            &mut dp,
            c0,
            "other udp port",
            &Udp::new(c4, 40000, g4c, 53).build(&jvpn(msg_type::DATA, S_V4, 1, 64)),
            XDP_PASS,
            None,
        );
        let mut arp = vec![0xffu8; 6];
        arp.extend_from_slice(&C0_MAC);
        arp.extend_from_slice(&[0x08, 0x06]);
        arp.extend_from_slice(&[0u8; 28]);
        rejected(&mut dp, c0, "arp", &arp, XDP_PASS, None);
        let mut tcp = from_client(40000).build(&jvpn(msg_type::DATA, S_V4, 1, 64));
        tcp[23] = 6; // protocol byte; the kernel will reject the checksum, not us
        rejected(&mut dp, c0, "tcp", &tcp, XDP_PASS, None);

        // Next hop problems: the frame goes to the kernel untouched, or is dropped.
        rejected(
            &mut dp,
            c0,
            "neighbour unresolved",
            &from_client(40006).build(&jvpn(msg_type::DATA, S_NONEIGH, 1, 64)),
            XDP_PASS,
            Some(counters::NEIGH_UNRESOLVED),
        );
        rejected(
            &mut dp,
            c0,
            "no route",
            &from_client(40008).build(&jvpn(msg_type::DATA, S_NOROUTE, 1, 64)),
            XDP_DROP,
            Some(counters::FIB_FAILURE),
        );
        rejected(
            &mut dp,
            c0,
            "larger than the egress MTU",
            &from_client(40000).build(&jvpn(msg_type::DATA, S_V4, 1, 1500)),
            XDP_DROP,
            Some(counters::MTU_EXCEEDED),
        );
        let mut nocsum = Udp::new(c4, 40002, g4c, PORT);
        nocsum.no_udp_checksum = true;
        rejected(
            &mut dp,
            c0,
            "no udp checksum toward ipv6",
            &nocsum.build(&jvpn(msg_type::DATA, S_4TO6, 1, 64)),
            XDP_DROP,
            Some(counters::NO_UDP_CHECKSUM),
        );
        let _ = (x4, g4x);
    });
}

/// IPv4 header offsets in an untagged frame.
const IP: usize = 14;
const UDP: usize = IP + 20;

#[test]
fn malformed_frames_are_never_forwarded() {
    require_root!();
    let lab = lab();
    lab.ns.run(|| {
        let mut dp = load(&lab);
        install_sessions(&mut dp);
        let (c4, g4c) = (v4("10.10.1.2"), v4("10.10.1.1"));
        let good4 = Udp::new(c4, 40000, g4c, PORT).build(&jvpn(msg_type::DATA, S_V4, 1, 64));
        let mut vlan = Udp::new(c4, 40000, g4c, PORT);
        vlan.vlan = Some(7);
        let good_vlan = vlan.build(&jvpn(msg_type::DATA, S_V4, 1, 64));
        let good6 = Udp::new(v6("fd00:1::2"), 40001, v6("fd00:1::1"), PORT).build(&jvpn(
            msg_type::DATA,
            S_V6,
            1,
            64,
        ));
        let c0 = lab.c0;

        // Cut frames at every length: never relayed, never modified. Below 14 bytes
        // (an Ethernet header) the kernel refuses the frame before any XDP program
        // runs, in test runs as on the wire; the relay's own bounds checks are
        // exercised on the slice parser for those lengths in jvpn-common's tests.
        for (name, good) in [("ipv4", &good4), ("vlan", &good_vlan), ("ipv6", &good6)] {
            for len in 0..good.len() {
                let before = dp.drops().unwrap();
                let prog = dp.program(RELAY_PROGRAM).unwrap();
                let r = match try_run(prog, &good[..len], c0) {
                    Ok(r) => r,
                    Err(e) if len < 14 => {
                        assert!(e.to_string().contains("bpf_prog_test_run"), "{e}");
                        continue;
                    }
                    Err(e) => panic!("{name} cut at {len}: {e}"),
                };
                assert!(
                    r.action == XDP_PASS || r.action == XDP_DROP,
                    "{name} cut at {len}: action {}",
                    r.action
                );
                assert_eq!(r.out, &good[..len], "{name} cut at {len}: modified");
                let d = delta(&before, &dp.drops().unwrap());
                if r.action == XDP_DROP {
                    assert_eq!(d, vec![("malformed", 1)], "{name} cut at {len}");
                } else {
                    assert!(d.is_empty(), "{name} cut at {len}: {d:?}");
                }
            }
        }

        // Consistent lengths but a jvpn payload shorter than header (+ tag for DATA).
        for len in 0..jvpn_common::wire::MIN_DATA_LEN {
            let p = &jvpn(msg_type::DATA, S_V4, 1, 16)[..len];
            rejected(
                &mut dp,
                c0,
                &format!("data payload of {len} bytes"),
                &Udp::new(c4, 40000, g4c, PORT).build(p),
                XDP_DROP,
                Some(counters::MALFORMED),
            );
        }
        for len in 0..jvpn_common::wire::HEADER_LEN {
            let p = &jvpn(msg_type::KEEPALIVE, S_V4, 1, 0)[..len];
            rejected(
                &mut dp,
                c0,
                &format!("control payload of {len} bytes"),
                &Udp::new(c4, 40000, g4c, PORT).build(p),
                XDP_DROP,
                Some(counters::MALFORMED),
            );
        }

        let edit = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut v = good4.clone();
            f(&mut v);
            v
        };
        // Bad IHL hides the UDP header: the kernel drops it, we do not touch it.
        for ihl in 0..5u8 {
            rejected(
                &mut dp,
                c0,
                &format!("ihl {ihl}"),
                &edit(&|v| v[IP] = 0x40 | ihl),
                XDP_PASS,
                None,
            );
        }
        rejected(
            &mut dp,
            c0,
            "ip version 5",
            &edit(&|v| v[IP] = 0x55),
            XDP_PASS,
            None,
        );
        rejected(
            &mut dp,
            c0,
            "ihl beyond the frame",
            &edit(&|v| v[IP] = 0x4f),
            XDP_PASS,
            None,
        );
        // Fragments: the first (MF) carries our port and is dropped; later ones have no
        // UDP header and are the kernel's.
        rejected(
            &mut dp,
            c0,
            "first fragment",
            &edit(&|v| v[IP + 6] = 0x20),
            XDP_DROP,
            Some(counters::FRAGMENT),
        );
        rejected(
            &mut dp,
            c0,
            "later fragment",
            &edit(&|v| {
                v[IP + 6] = 0x00;
                v[IP + 7] = 0x10
            }),
            XDP_PASS,
            None,
        );
        // Lengths that lie.
        let set16 =
            |v: &mut Vec<u8>, at: usize, x: u16| v[at..at + 2].copy_from_slice(&x.to_be_bytes());
        let ip_total = (good4.len() - IP) as u16;
        let udp_len = ip_total - 20;
        rejected(
            &mut dp,
            c0,
            "ip total length beyond the frame",
            &edit(&|v| set16(v, IP + 2, ip_total + 1)),
            XDP_DROP,
            Some(counters::MALFORMED),
        );
        rejected(
            &mut dp,
            c0,
            "ip total length below headers",
            &edit(&|v| set16(v, IP + 2, 27)),
            XDP_DROP,
            Some(counters::MALFORMED),
        );
        rejected(
            &mut dp,
            c0,
            "udp length longer than ip payload",
            &edit(&|v| set16(v, UDP + 4, udp_len + 1)),
            XDP_DROP,
            Some(counters::MALFORMED),
        );
        rejected(
            &mut dp,
            c0,
            "udp length shorter than ip payload",
            &edit(&|v| set16(v, UDP + 4, udp_len - 1)),
            XDP_DROP,
            Some(counters::MALFORMED),
        );
        rejected(
            &mut dp,
            c0,
            "udp length below 8",
            &edit(&|v| set16(v, UDP + 4, 4)),
            XDP_DROP,
            Some(counters::MALFORMED),
        );
        let mut v6 = good6.clone();
        let pl = u16::from_be_bytes([v6[18], v6[19]]);
        v6[18..20].copy_from_slice(&(pl + 3).to_be_bytes());
        rejected(
            &mut dp,
            c0,
            "ipv6 payload length beyond the frame",
            &v6,
            XDP_DROP,
            Some(counters::MALFORMED),
        );
        // Two VLAN tags (QinQ) are not parsed: the kernel's.
        let mut qinq = good_vlan.clone();
        qinq.splice(16..16, [0x81, 0x00, 0x00, 0x05]);
        rejected(&mut dp, c0, "two vlan tags", &qinq, XDP_PASS, None);
        // Trailing bytes after the IP packet (Ethernet padding) are allowed and relayed.
        let mut padded = good4.clone();
        padded.extend_from_slice(&[0u8; 6]);
        let r = run(dp.program(RELAY_PROGRAM).unwrap(), &padded, c0);
        assert_eq!(r.action, XDP_REDIRECT, "padded frame");
    });
}

/// Per-session counters live in slots of `SESSION_STATS` that the data-plane module
/// hands out: a full table refuses a session and changes nothing, and a freed slot
/// comes back zeroed for its next session.
#[test]
fn statistics_slots_are_bounded_and_recycled_zeroed() {
    require_root!();
    let lab = lab();
    lab.ns.run(|| {
        let mut dp = Datapath::load(DatapathConfig {
            port: PORT,
            max_sessions: 2,
            pin_dir: lab.pins.0.clone(),
            debug_log: false,
        })
        .expect("load the XDP object");
        let (c4, g4c, x4, g4x) = (
            v4("10.10.1.2"),
            v4("10.10.1.1"),
            v4("10.10.9.2"),
            v4("10.10.9.1"),
        );
        let (a, b, c) = (S_V4, S_V6, S_LAN);
        let entry = session(c4, 40000, g4c, x4, g4x);
        dp.insert_session(a, &entry).unwrap();
        dp.insert_session(b, &session(c4, 40001, g4c, x4, g4x))
            .unwrap();
        let err = dp.insert_session(c, &entry).unwrap_err().to_string();
        assert!(err.contains("all 2 are in use"), "{err}");
        assert_eq!(dp.session(c).unwrap(), None);

        let up = |dp: &mut Datapath, sid| {
            let frame = Udp::new(c4, 40000, g4c, PORT).build(&jvpn(msg_type::DATA, sid, 9, 100));
            run(dp.program(RELAY_PROGRAM).unwrap(), &frame, lab.c0).action
        };
        assert_eq!(up(&mut dp, a), XDP_REDIRECT);
        assert_eq!(dp.session_stats(a).unwrap().unwrap().up_packets, 1);
        let slot_a = dp.session(a).unwrap().unwrap().stats_slot;

        dp.remove_session(a).unwrap();
        assert_eq!(dp.session_stats(a).unwrap(), None);
        // The only free slot is a's: c gets it, from zero.
        dp.insert_session(c, &entry).unwrap();
        assert_eq!(dp.session(c).unwrap().unwrap().stats_slot, slot_a);
        assert_eq!(dp.session_stats(c).unwrap().unwrap(), Default::default());
        assert_eq!(up(&mut dp, c), XDP_REDIRECT);
        // 100 bytes of body behind the 20-byte jvpn header.
        let s = dp.session_stats(c).unwrap().unwrap();
        assert_eq!((s.up_packets, s.up_bytes), (1, 120));
        assert_eq!(dp.session_stats(b).unwrap().unwrap(), Default::default());
        // A binding swap keeps the slot, whatever the caller's entry says.
        let moved = SessionEntry {
            generation: 2,
            stats_slot: 12345,
            ..entry
        };
        dp.replace_session(c, &moved).unwrap();
        assert_eq!(dp.session(c).unwrap().unwrap().stats_slot, slot_a);
        assert_eq!(dp.session_stats(c).unwrap().unwrap().up_packets, 1);
    });
}
