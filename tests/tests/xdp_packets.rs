//! The XDP relay, packet by packet, through `BPF_PROG_TEST_RUN` in a namespace whose
//! FIB and neighbour table are set up by the test (so next hops and MACs are exact).
//! Every case checks the XDP action and the exact output bytes; relayed frames are
//! also checked with an independent checksum implementation (etherparse).

use std::net::IpAddr;

use jvpn_common::{
    cookie::{self, Cookie, Source},
    counters,
    maps::{Endpoint, FLAG_FORWARDING, SessionEntry, SessionStats},
    wire::{COOKIE_MSG_LEN, HELLO_COOKIE_LEN, HELLO_LEN, HELLO_NONCE_OFF, WireHeader, msg_type},
};
use jvpn_ctl::datapath::{Datapath, DatapathConfig, Drops, GateLimits, RELAY_PROGRAM};
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

/// Runs every relay case; `slow`: the next hop comes from the FIB (counted as
/// `next_hop_fib`), else from the next-hop table (nothing counted).
fn run_relay_cases(dp: &mut Datapath, lab: &Lab, slow: bool) {
    let path = if slow { "fib" } else { "table" };
    for c in &relay_cases(lab) {
        let before = dp.drops().unwrap();
        let frame = c.ingress.build(&c.payload);
        let ifindex = if c.via_x0 { lab.x0 } else { lab.c0 };
        let r = run(dp.program(RELAY_PROGRAM).unwrap(), &frame, ifindex);
        assert_eq!(r.action, c.action, "{} ({path}): action", c.name);
        let want = c.expect.build(&c.payload);
        assert_eq!(r.out, want, "{} ({path}): output bytes", c.name);
        assert_eq!(verify_checksums(&r.out), c.payload, "{}: payload", c.name);
        let d = delta(&before, &dp.drops().unwrap());
        if slow {
            assert_eq!(
                d,
                [("next_hop_fib", 1)],
                "{}: the slow path, counted",
                c.name
            );
        } else {
            assert!(
                d.is_empty(),
                "{} (table): nothing counted, got {d:?}",
                c.name
            );
        }
    }
}

#[test]
fn relays_every_family_combination_with_exact_bytes() {
    require_root!();
    let lab = lab();
    lab.ns.run(|| {
        let mut dp = load(&lab);
        install_sessions(&mut dp);
        // The same bytes whichever way the next hop is found.
        run_relay_cases(&mut dp, &lab, true);
        dp.enable_next_hops().unwrap();
        run_relay_cases(&mut dp, &lab, false);
        // Per-session counters: S_V4 relayed up 4 times (plain, vlan, options, no
        // checksum) and down once per path, 120 payload bytes each.
        let s = dp.session_stats(S_V4).unwrap().unwrap();
        assert_eq!((s.up_packets, s.down_packets), (8, 2));
        assert_eq!((s.up_bytes, s.down_bytes), (960, 240));
    });
}

#[test]
fn next_hop_table_hit_miss_and_invalid_entries() {
    require_root!();
    let lab = lab();
    lab.ns.run(|| {
        let mut dp = load(&lab);
        install_sessions(&mut dp);
        // The client and the gateway's address it sends to (the exit is 10.10.9.2).
        let (c4, g4c) = (v4("10.10.1.2"), v4("10.10.1.1"));
        let up = |payload: usize| {
            Udp::new(c4, 40000, g4c, PORT).build(&jvpn(msg_type::DATA, S_V4, 1, payload))
        };
        let send = |dp: &mut Datapath, frame: &[u8]| {
            let before = dp.drops().unwrap();
            let r = run(dp.program(RELAY_PROGRAM).unwrap(), frame, lab.c0);
            (r, delta(&before, &dp.drops().unwrap()))
        };
        let dmac = |out: &[u8]| <[u8; 6]>::try_from(&out[..6]).unwrap();

        // Miss: no table kept, no hop in the entry: the FIB, counted.
        assert_eq!(dp.session(S_V4).unwrap().unwrap().exit_hop, 0);
        let (r, d) = send(&mut dp, &up(100));
        assert_eq!((r.action, dmac(&r.out)), (XDP_REDIRECT, EXIT_MAC));
        assert_eq!(d, [("next_hop_fib", 1)]);

        // Hit: the entry names a hop with the exit's neighbour.
        dp.enable_next_hops().unwrap();
        let e = dp.session(S_V4).unwrap().unwrap();
        assert_ne!(e.exit_hop, 0);
        assert_ne!(e.client_hop, 0);
        let hop = dp.next_hop(e.exit_hop).expect("a valid entry");
        assert_eq!(
            (hop.ifindex, hop.smac, hop.dmac, hop.mtu),
            (lab.x0, X0_MAC, EXIT_MAC, 1500)
        );
        let (r, d) = send(&mut dp, &up(100));
        assert_eq!((r.action, dmac(&r.out)), (XDP_REDIRECT, EXIT_MAC));
        assert!(d.is_empty(), "{d:?}");
        let unresolved = dp.session(S_NONEIGH).unwrap().unwrap().exit_hop;
        assert!(
            unresolved == 0 || dp.next_hop(unresolved).is_none(),
            "a neighbour nobody resolved has no valid entry"
        );

        // The table, not the FIB, decides: a neighbour's new MAC is used once its
        // notification is processed, not before.
        let new_mac = [2, 0, 0, 0, 9, 0x77];
        let fmt = jvpn_ctl::bench::netif::format_mac;
        lab.ns
            .ip(&[
                "neigh",
                "replace",
                "10.10.9.2",
                "lladdr",
                &fmt(&new_mac),
                "nud",
                "permanent",
                "dev",
                "x0",
            ])
            .unwrap();
        let (r, _) = send(&mut dp, &up(100));
        assert_eq!(
            dmac(&r.out),
            EXIT_MAC,
            "not processed yet: the entry as it was"
        );
        jvpn_tests::settle_next_hops(&mut dp, "neighbour MAC", |dp| {
            dp.next_hop(e.exit_hop).is_some_and(|h| h.dmac == new_mac)
        });
        let (r, d) = send(&mut dp, &up(100));
        assert_eq!((dmac(&r.out), d.len()), (new_mac, 0), "{d:?}");

        // Invalid: the neighbour gone, the entry invalidated; the FIB finds no
        // neighbour either, so the packet goes to the kernel untouched, counted.
        lab.ns
            .ip(&["neigh", "del", "10.10.9.2", "dev", "x0"])
            .unwrap();
        jvpn_tests::settle_next_hops(&mut dp, "neighbour deleted", |dp| {
            dp.next_hop(e.exit_hop).is_none()
        });
        let frame = up(100);
        let (r, d) = send(&mut dp, &frame);
        assert_eq!((r.action, &r.out), (XDP_PASS, &frame));
        assert_eq!(d, [("neigh_unresolved", 1)]);
        lab.ns
            .ip(&[
                "neigh",
                "replace",
                "10.10.9.2",
                "lladdr",
                &fmt(&EXIT_MAC),
                "nud",
                "permanent",
                "dev",
                "x0",
            ])
            .unwrap();
        jvpn_tests::settle_next_hops(&mut dp, "neighbour back", |dp| {
            dp.next_hop(e.exit_hop).is_some_and(|h| h.dmac == EXIT_MAC)
        });

        // A route MTU: a new hop (same neighbour, smaller MTU), the session moved to it,
        // and the MTU enforced from the table as the FIB would.
        lab.ns
            .ip(&[
                "route",
                "replace",
                "10.10.9.0/24",
                "dev",
                "x0",
                "src",
                "10.10.9.1",
                "mtu",
                "1000",
            ])
            .unwrap();
        jvpn_tests::settle_next_hops(&mut dp, "route mtu", |dp| {
            let e = dp.session(S_V4).unwrap().unwrap();
            dp.next_hop(e.exit_hop).is_some_and(|h| h.mtu == 1000)
        });
        let fits = 1000 - 20 - 8 - 20; // IPv4, UDP and jvpn headers
        let (r, d) = send(&mut dp, &up(fits));
        assert_eq!((r.action, d.len()), (XDP_REDIRECT, 0), "{d:?}");
        let big = up(fits + 1);
        let (r, d) = send(&mut dp, &big);
        assert_eq!((r.action, &r.out), (XDP_DROP, &big));
        assert_eq!(d, [("mtu_exceeded", 1)]);

        // Not kept any more: every entry invalid, the FIB again.
        dp.disable_next_hops();
        let (r, d) = send(&mut dp, &up(100));
        assert_eq!((r.action, dmac(&r.out)), (XDP_REDIRECT, EXIT_MAC));
        assert_eq!(d, [("next_hop_fib", 1)]);
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

/// The slot copy (jvpn_common::hot, docs/datapath.md "One cache line per packet"):
/// a session in the slot its id names is relayed from the copy alone; an id whose
/// slot another session holds, a torn copy, and a swapped binding all relay exactly
/// as the `SESSIONS` entry says, the lookups counted; a removed session's copy is
/// never used again.
#[test]
fn slot_copies_hit_collide_tear_and_follow_the_entry() {
    require_root!();
    let lab = lab();
    lab.ns.run(|| {
        let mut dp = load(&lab);
        dp.enable_next_hops().unwrap();
        let (c4, g4c, x4, g4x) = (
            v4("10.10.1.2"),
            v4("10.10.1.1"),
            v4("10.10.9.2"),
            v4("10.10.9.1"),
        );
        // Same low 32 bits: the same slot, whatever the table's size.
        let (a, b) = (S_V4, S_V4 ^ (1 << 40));
        dp.insert_session(a, &session(c4, 40000, g4c, x4, g4x))
            .unwrap();
        dp.insert_session(b, &session(c4, 40001, g4c, x4, g4x))
            .unwrap();
        jvpn_tests::settle_next_hops(&mut dp, "exit neighbour", |dp| {
            dp.session(a)
                .unwrap()
                .is_some_and(|e| dp.next_hop(e.exit_hop).is_some())
        });
        let copy = dp.session_copy(a).expect("a holds the slot its id names");
        assert_eq!(
            (copy.id, copy.client.port(), copy.forwarding),
            (a, 40000, true)
        );
        assert_eq!(dp.session_copy(b), None, "b's slot is a's: no copy");
        let send = |dp: &mut Datapath, sid: u64, cport: u16| {
            let frame = Udp::new(c4, cport, g4c, PORT).build(&jvpn(msg_type::DATA, sid, 1, 64));
            let before = dp.drops().unwrap();
            let r = run(dp.program(RELAY_PROGRAM).unwrap(), &frame, lab.c0);
            (r.action, delta(&before, &dp.drops().unwrap()))
        };
        assert_eq!(
            send(&mut dp, a, 40000),
            (XDP_REDIRECT, vec![]),
            "from the copy"
        );
        assert_eq!(
            send(&mut dp, b, 40001),
            (XDP_REDIRECT, vec![("session_lookup", 1)]),
            "b by SESSIONS"
        );
        // a's copy never steers b's packets: b's binding is b's.
        assert_eq!(
            send(&mut dp, b, 40000),
            (XDP_DROP, vec![("stale_binding", 1)])
        );
        assert_eq!(
            (
                dp.session_stats(a).unwrap().unwrap().up_packets,
                dp.session_stats(b).unwrap().unwrap().up_packets
            ),
            (1, 1)
        );

        // A reader caught mid-update refuses the copy and takes the entry.
        dp.tear_session_copy(a);
        assert_eq!(dp.session_copy(a), None);
        assert_eq!(
            send(&mut dp, a, 40000),
            (XDP_REDIRECT, vec![("session_lookup", 1)])
        );

        // A binding swap rewrites the copy with the entry.
        let moved = SessionEntry {
            generation: 2,
            ..session(c4, 40002, g4c, x4, g4x)
        };
        dp.replace_session(a, &moved).unwrap();
        assert_eq!(dp.session_copy(a).map(|c| c.client.port()), Some(40002));
        assert_eq!(send(&mut dp, a, 40002), (XDP_REDIRECT, vec![]));
        assert_eq!(
            send(&mut dp, a, 40000),
            (XDP_DROP, vec![("stale_binding", 1)])
        );
        // Forwarding off, in the copy too.
        dp.replace_session(
            a,
            &SessionEntry {
                flags: 0,
                generation: 3,
                ..moved
            },
        )
        .unwrap();
        assert_eq!(
            send(&mut dp, a, 40002),
            (XDP_DROP, vec![("not_forwarding", 1)])
        );

        // Removed: the copy is gone with it, b is unaffected.
        dp.remove_session(a).unwrap();
        assert_eq!(dp.session_copy(a), None);
        assert_eq!(
            send(&mut dp, a, 40002),
            (XDP_DROP, vec![("unknown_session", 1)])
        );
        assert_eq!(
            send(&mut dp, b, 40001),
            (XDP_REDIRECT, vec![("session_lookup", 1)])
        );
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

// ---------------------------------------------------------------------------------
// The HELLO gate and the per-session control budgets (docs/datapath.md, "The HELLO
// gate and control budgets"; docs/protocol.md, "Under load: cookies").

/// A HELLO (172 bytes, recognisable filler) with a cookie appended if given.
fn hello(with: Option<&Cookie>) -> Vec<u8> {
    let mut p = jvpn(msg_type::HELLO, 0, 1, HELLO_LEN - 20);
    if let Some(c) = with {
        p.extend_from_slice(c);
    }
    p
}

/// Limits small enough for a test to reach: `burst` HELLOs of budget, refilled at
/// 1/s; under load for ten minutes once the budget fell below half.
fn small(burst: u32) -> GateLimits {
    GateLimits {
        hello_budget_pps: 1,
        hello_budget_burst: burst,
        load_hold_ms: 600_000,
        ..GateLimits::default()
    }
}

/// One run: action, output, counters moved.
fn send(dp: &mut Datapath, ifindex: u32, frame: &[u8]) -> (u32, Vec<u8>, Vec<(&'static str, u64)>) {
    let before = dp.drops().unwrap();
    let r = run(dp.program(RELAY_PROGRAM).unwrap(), frame, ifindex);
    (r.action, r.out, delta(&before, &dp.drops().unwrap()))
}

/// Passes `n` HELLOs from addresses nobody else uses, to spend budget.
fn spend(dp: &mut Datapath, ifindex: u32, n: u16) {
    for i in 0..n {
        let f = Udp::new(v4("10.10.1.100"), 6000 + i, v4("10.10.1.1"), PORT).build(&hello(None));
        let (action, out, d) = send(dp, ifindex, &f);
        assert_eq!((action, d.len()), (XDP_PASS, 0), "spending HELLO {i}");
        assert_eq!(out, f);
    }
}

/// Checks a COOKIE sent back for `hello_frame` (from `client:cport` to `gw:PORT`) with
/// etherparse, and returns its cookie after checking it is valid for the client.
fn check_reply(
    dp: &Datapath,
    hello_frame: &[u8],
    out: &[u8],
    client: IpAddr,
    cport: u16,
    gw: IpAddr,
) -> Cookie {
    // Checksums (IPv4 header, UDP over either family) by etherparse.
    let payload = verify_checksums(out);
    assert_eq!(payload.len(), COOKIE_MSG_LEN);
    assert!(out.len() < hello_frame.len(), "never larger than the HELLO");
    assert_eq!(
        (&out[..6], &out[6..12]),
        (&hello_frame[6..12], &hello_frame[..6]),
        "MACs swapped"
    );
    let h = etherparse::PacketHeaders::from_ethernet_slice(out).expect("parses");
    assert_eq!(
        h.link_exts.len(),
        usize::from(hello_frame[12] == 0x81),
        "a VLAN tag kept"
    );
    match h.net.expect("IP") {
        etherparse::NetHeaders::Ipv4(ip, _) => {
            assert_eq!(
                (IpAddr::from(ip.source), IpAddr::from(ip.destination)),
                (gw, client)
            );
            assert_eq!(ip.time_to_live, 64);
            assert!(ip.dont_fragment);
        }
        etherparse::NetHeaders::Ipv6(ip, _) => {
            assert_eq!(
                (IpAddr::from(ip.source), IpAddr::from(ip.destination)),
                (gw, client)
            );
            assert_eq!(ip.hop_limit, 64);
        }
        other => panic!("{other:?}"),
    }
    let Some(etherparse::TransportHeader::Udp(udp)) = h.transport else {
        panic!("UDP")
    };
    assert_eq!(
        (udp.source_port, udp.destination_port),
        (PORT, cport),
        "ports swapped"
    );
    assert_eq!(
        &payload[..20],
        &WireHeader::new(msg_type::COOKIE, 0, 0).to_bytes()
    );
    let hello_payload = verify_checksums(hello_frame);
    assert_eq!(
        &payload[20..36],
        &hello_payload[HELLO_NONCE_OFF..HELLO_NONCE_OFF + 16],
        "nonce echoed"
    );
    let c: Cookie = payload[36..52].try_into().unwrap();
    assert!(
        valid(dp, &c, client, cport),
        "the cookie is valid for its source"
    );
    c
}

fn valid(dp: &Datapath, c: &Cookie, addr: IpAddr, port: u16) -> bool {
    let keys = dp.cookie_keys().unwrap();
    let seq = dp.gate_config().unwrap().cookie_seq;
    let e = Endpoint::from_ip(addr, port);
    let src = Source {
        addr: &e.addr,
        port: e.port_be.to_ne_bytes(),
        family: e.family,
    };
    cookie::check(c, seq, |s| Some(keys[s as usize]), &src)
}

#[test]
fn hello_gate_not_under_load_passes_hellos_untouched() {
    require_root!();
    let lab = lab();
    lab.ns.run(|| {
        let mut dp = load(&lab);
        let (c4, g4c) = (v4("10.10.1.2"), v4("10.10.1.1"));
        let from = Udp::new(c4, 40000, g4c, PORT);
        let odd = |len: usize| from.build(&jvpn(msg_type::HELLO, 0, 1, len - 20));
        // No controller wrote the gate (an older one, or `datapath up`): as before,
        // every HELLO passes, whatever its length.
        assert_eq!(dp.gate_config().unwrap(), Default::default());
        for len in [HELLO_LEN, 173, 187, HELLO_COOKIE_LEN, 100] {
            rejected(
                &mut dp,
                lab.c0,
                &format!("gate off, {len} bytes"),
                &odd(len),
                XDP_PASS,
                None,
            );
        }
        dp.set_gate(&GateLimits::default()).unwrap();
        let keys = dp.cookie_keys().unwrap();
        assert!(
            keys.iter().all(|k| !k.is_zero()),
            "fresh keys before the gate is on"
        );
        assert_eq!(dp.gate_config().unwrap().enabled, 1);
        // Well-formed HELLOs pass unchanged, byte for byte; a cookie is not looked at.
        rejected(
            &mut dp,
            lab.c0,
            "hello",
            &from.build(&hello(None)),
            XDP_PASS,
            None,
        );
        rejected(
            &mut dp,
            lab.c0,
            "hello with any cookie",
            &from.build(&hello(Some(&[7; 16]))),
            XDP_PASS,
            None,
        );
        let v6 = Udp::new(v6("fd00:1::2"), 40001, v6("fd00:1::1"), PORT);
        rejected(
            &mut dp,
            lab.c0,
            "hello over ipv6",
            &v6.build(&hello(None)),
            XDP_PASS,
            None,
        );
        // Odd lengths can never be a HELLO: malformed, in XDP now.
        for len in [
            HELLO_LEN - 1,
            HELLO_LEN + 1,
            HELLO_COOKIE_LEN - 1,
            HELLO_COOKIE_LEN + 1,
            20,
        ] {
            rejected(
                &mut dp,
                lab.c0,
                &format!("{len} bytes"),
                &odd(len),
                XDP_DROP,
                Some(counters::MALFORMED),
            );
        }
        // A second start keeps the keys and the sequence (cookies handed out stay good).
        dp.rotate_cookie_key().unwrap();
        let (seq, keys) = (
            dp.gate_config().unwrap().cookie_seq,
            dp.cookie_keys().unwrap(),
        );
        dp.set_gate(&GateLimits::default()).unwrap();
        assert_eq!(
            (
                dp.gate_config().unwrap().cookie_seq,
                dp.cookie_keys().unwrap()
            ),
            (seq, keys)
        );
        // Turned off: as before again.
        dp.disable_gate().unwrap();
        rejected(
            &mut dp,
            lab.c0,
            "gate off again, 173 bytes",
            &odd(173),
            XDP_PASS,
            None,
        );
    });
}

#[test]
fn replies_arriving_at_the_gateway_are_dropped() {
    require_root!();
    let lab = lab();
    lab.ns.run(|| {
        let mut dp = load(&lab);
        let from = Udp::new(v4("10.10.1.2"), 40000, v4("10.10.1.1"), PORT);
        for on in [false, true] {
            if on {
                dp.set_gate(&GateLimits::default()).unwrap();
            }
            for (t, len) in [(msg_type::COOKIE, 32), (msg_type::TIME, 88)] {
                rejected(
                    &mut dp,
                    lab.c0,
                    &format!("type {t:#x}, gate {on}"),
                    &from.build(&jvpn(t, 0, 0, len)),
                    XDP_DROP,
                    Some(counters::UNEXPECTED_REPLY),
                );
            }
        }
    });
}

#[test]
fn under_load_hellos_without_a_valid_cookie_get_one_from_xdp() {
    require_root!();
    let lab = lab();
    lab.ns.run(|| {
        let mut dp = load(&lab);
        let c0 = lab.c0;
        let (c4, g4c) = (v4("10.10.1.2"), v4("10.10.1.1"));
        dp.set_gate(&small(100)).unwrap();
        // 51 HELLOs leave 49 tokens, below half the burst: under load from now on.
        spend(&mut dp, c0, 51);

        // A HELLO without a cookie: a COOKIE comes back instead, nothing reaches
        // userspace.
        let from = Udp::new(c4, 40000, g4c, PORT);
        let f = from.build(&hello(None));
        let (action, out, d) = send(&mut dp, c0, &f);
        assert_eq!(action, XDP_TX);
        assert_eq!(d, vec![("hello_cookie_sent", 1)]);
        let c = check_reply(&dp, &f, &out, c4, 40000, g4c);
        assert!(counters::is_answer(counters::HELLO_COOKIE_SENT));

        // With that cookie, from the same address and port: passed, untouched, until
        // the per-source burst (5) is spent.
        let with = from.build(&hello(Some(&c)));
        for i in 0..5 {
            rejected(
                &mut dp,
                c0,
                &format!("valid cookie {i}"),
                &with,
                XDP_PASS,
                None,
            );
        }
        rejected(
            &mut dp,
            c0,
            "over the source's burst",
            &with,
            XDP_DROP,
            Some(counters::HELLO_SOURCE_LIMITED),
        );

        // The same cookie from another port or address: invalid, a new COOKIE.
        for (addr, port) in [(c4, 40001), (v4("10.10.1.3"), 40000)] {
            let f = Udp::new(addr, port, g4c, PORT).build(&hello(Some(&c)));
            let (action, out, d) = send(&mut dp, c0, &f);
            assert_eq!(action, XDP_TX, "{addr}:{port}");
            assert_eq!(
                d,
                vec![("cookie_invalid", 1), ("hello_cookie_sent", 1)],
                "{addr}:{port}"
            );
            let fresh = check_reply(&dp, &f, &out, addr, port, g4c);
            assert!(!valid(&dp, &c, addr, port));
            assert_ne!(fresh, c);
        }

        // Rotations: a cookie survives one, not two.
        let b = Udp::new(v4("10.10.1.4"), 7000, g4c, PORT);
        let (_, out, _) = send(&mut dp, c0, &b.build(&hello(None)));
        let cb = check_reply(
            &dp,
            &b.build(&hello(None)),
            &out,
            v4("10.10.1.4"),
            7000,
            g4c,
        );
        let with_b = b.build(&hello(Some(&cb)));
        dp.rotate_cookie_key().unwrap();
        rejected(&mut dp, c0, "one rotation later", &with_b, XDP_PASS, None);
        dp.rotate_cookie_key().unwrap();
        let (action, _, d) = send(&mut dp, c0, &with_b);
        assert_eq!(
            (action, d),
            (
                XDP_TX,
                vec![("cookie_invalid", 1), ("hello_cookie_sent", 1)]
            ),
            "two rotations later"
        );

        // IPv6: the reply carries the mandatory UDP checksum; the source bucket is the /64.
        let (c6, g6c) = (v6("fd00:1::2"), v6("fd00:1::1"));
        let from6 = Udp::new(c6, 40001, g6c, PORT);
        let f = from6.build(&hello(None));
        let (action, out, _) = send(&mut dp, c0, &f);
        assert_eq!(action, XDP_TX);
        let c6c = check_reply(&dp, &f, &out, c6, 40001, g6c);
        let other6 = v6("fd00:1::99");
        let f = Udp::new(other6, 5, g6c, PORT).build(&hello(None));
        let (_, out, _) = send(&mut dp, c0, &f);
        let c6o = check_reply(&dp, &f, &out, other6, 5, g6c);
        for i in 0..3 {
            rejected(
                &mut dp,
                c0,
                &format!("ipv6 {i}"),
                &from6.build(&hello(Some(&c6c))),
                XDP_PASS,
                None,
            );
        }
        let same64 = Udp::new(other6, 5, g6c, PORT).build(&hello(Some(&c6o)));
        for i in 0..2 {
            rejected(
                &mut dp,
                c0,
                &format!("same /64 {i}"),
                &same64,
                XDP_PASS,
                None,
            );
        }
        rejected(
            &mut dp,
            c0,
            "the /64's burst is shared",
            &same64,
            XDP_DROP,
            Some(counters::HELLO_SOURCE_LIMITED),
        );

        // VLAN tag kept; IPv4 options not answered; odd lengths still malformed.
        let mut tagged = Udp::new(v4("10.10.1.5"), 7001, g4c, PORT);
        tagged.vlan = Some(42);
        let f = tagged.build(&hello(None));
        let (action, out, _) = send(&mut dp, c0, &f);
        assert_eq!(action, XDP_TX);
        assert_eq!(&out[12..18], &f[12..18], "tag and ethertype kept");
        check_reply(&dp, &f, &out, v4("10.10.1.5"), 7001, g4c);
        let mut opts = Udp::new(v4("10.10.1.6"), 7002, g4c, PORT);
        opts.ipv4_options = vec![1, 1, 1, 0];
        rejected(
            &mut dp,
            c0,
            "ipv4 options",
            &opts.build(&hello(None)),
            XDP_DROP,
            Some(counters::HELLO_IP_OPTIONS),
        );
        for len in [173, 187] {
            let f = from.build(&jvpn(msg_type::HELLO, 0, 1, len - 20));
            rejected(
                &mut dp,
                c0,
                &format!("{len} bytes under load"),
                &f,
                XDP_DROP,
                Some(counters::MALFORMED),
            );
        }
    });
}

#[test]
fn under_load_the_global_budget_still_bounds_valid_cookies() {
    require_root!();
    let lab = lab();
    lab.ns.run(|| {
        let mut dp = load(&lab);
        let (c4, g4c) = (v4("10.10.1.2"), v4("10.10.1.1"));
        dp.set_gate(&small(2)).unwrap();
        spend(&mut dp, lab.c0, 2);
        let from = Udp::new(c4, 40000, g4c, PORT);
        let f = from.build(&hello(None));
        let (action, out, _) = send(&mut dp, lab.c0, &f);
        assert_eq!(action, XDP_TX);
        let c = check_reply(&dp, &f, &out, c4, 40000, g4c);
        rejected(
            &mut dp,
            lab.c0,
            "valid cookie, no budget left",
            &from.build(&hello(Some(&c))),
            XDP_DROP,
            Some(counters::HELLO_BUDGET),
        );
    });
}

#[test]
fn control_budgets_are_per_session_and_split_by_binding() {
    require_root!();
    let lab = lab();
    lab.ns.run(|| {
        let mut dp = load(&lab);
        install_sessions(&mut dp);
        dp.set_gate(&GateLimits {
            control_binding_pps: 1,
            control_binding_burst: 3,
            control_other_pps: 1,
            control_other_burst: 2,
            ..GateLimits::default()
        })
        .unwrap();
        let (c4, g4c) = (v4("10.10.1.2"), v4("10.10.1.1"));
        let ka = |sid| jvpn(msg_type::KEEPALIVE, sid, 1, 52);
        let binding = Udp::new(c4, 40000, g4c, PORT).build(&ka(S_V4));
        let other = Udp::new(v4("10.10.1.3"), 5555, g4c, PORT).build(&ka(S_V4));
        let other2 = Udp::new(c4, 40099, g4c, PORT).build(&ka(S_V4));
        for i in 0..2 {
            rejected(
                &mut dp,
                lab.c0,
                &format!("other {i}"),
                &other,
                XDP_PASS,
                None,
            );
        }
        rejected(
            &mut dp,
            lab.c0,
            "other over",
            &other,
            XDP_DROP,
            Some(counters::CONTROL_LIMITED),
        );
        rejected(
            &mut dp,
            lab.c0,
            "every other address shares it",
            &other2,
            XDP_DROP,
            Some(counters::CONTROL_LIMITED),
        );
        // The binding's budget is untouched by the flood from elsewhere.
        for i in 0..3 {
            rejected(
                &mut dp,
                lab.c0,
                &format!("binding {i}"),
                &binding,
                XDP_PASS,
                None,
            );
        }
        rejected(
            &mut dp,
            lab.c0,
            "binding over",
            &binding,
            XDP_DROP,
            Some(counters::CONTROL_LIMITED),
        );
        // Other sessions are not affected.
        let s6 = Udp::new(v6("fd00:1::2"), 40001, v6("fd00:1::1"), PORT).build(&ka(S_V6));
        let s4to6_other = Udp::new(v4("10.10.1.3"), 5555, g4c, PORT).build(&ka(S_4TO6));
        for i in 0..2 {
            rejected(
                &mut dp,
                lab.c0,
                &format!("other session {i}"),
                &s6,
                XDP_PASS,
                None,
            );
            rejected(
                &mut dp,
                lab.c0,
                &format!("other session, other address {i}"),
                &s4to6_other,
                XDP_PASS,
                None,
            );
        }
        // The budgets live in the session's statistics slot; DATA is not limited.
        let st = dp.session_stats(S_V4).unwrap().unwrap();
        assert!(st.ctl_binding != 0 && st.ctl_other != 0);
        let data = Udp::new(c4, 40000, g4c, PORT).build(&jvpn(msg_type::DATA, S_V4, 9, 100));
        assert_eq!(send(&mut dp, lab.c0, &data).0, XDP_REDIRECT);
        // The gate off: control passes again.
        dp.disable_gate().unwrap();
        rejected(&mut dp, lab.c0, "gate off", &binding, XDP_PASS, None);
    });
}

/// Creates and pins, with raw syscalls, a per-CPU array like the `DROPS` of a build
/// before the gate (14 reasons).
fn pin_old_drops(path: &std::path::Path) {
    const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
    pin_map(path, BPF_MAP_TYPE_PERCPU_ARRAY, 8, 14, 0);
}

/// `SESSION_STATS` as builds before the slot copies made it: 64-byte values.
fn pin_old_session_stats(path: &std::path::Path, max_entries: u32) {
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    const BPF_F_MMAPABLE: u32 = 1 << 10;
    pin_map(path, BPF_MAP_TYPE_ARRAY, 64, max_entries, BPF_F_MMAPABLE);
}

/// Creates and pins a map with 4-byte keys.
fn pin_map(
    path: &std::path::Path,
    map_type: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
) {
    #[repr(C)]
    struct Create {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
    }
    #[repr(C)]
    struct Pin {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_OBJ_PIN: libc::c_long = 6;
    let create = Create {
        map_type,
        key_size: 4,
        value_size,
        max_entries,
        map_flags,
    };
    // SAFETY: bpf(2) with a valid attribute struct of the size given.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_CREATE, &create, size_of::<Create>()) };
    assert!(fd >= 0, "map create: {}", std::io::Error::last_os_error());
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let pin = Pin {
        pathname: c.as_ptr() as u64,
        bpf_fd: fd as u32,
        file_flags: 0,
    };
    // SAFETY: as above; `c` outlives the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_PIN, &pin, size_of::<Pin>()) };
    assert_eq!(rc, 0, "pin: {}", std::io::Error::last_os_error());
    // SAFETY: our descriptor; the pin keeps the map.
    unsafe { libc::close(fd as i32) };
}

/// A data plane pinned by a build before the gate: its `DROPS` has 14 slots, its
/// `SESSION_STATS` 64-byte values (no slot copies), and the gate's maps and
/// `ENDPOINTS` are missing. A new controller keeps the sessions, replaces `DROPS` and
/// `SESSION_STATS` (counts restart), creates the missing maps (the gate off until it
/// writes it), gives the sessions their slot copies again, and runs.
#[test]
fn a_data_plane_pinned_before_the_gate_is_taken_over() {
    require_root!();
    let lab = lab();
    lab.ns.run(|| {
        let mut dp = load(&lab);
        install_sessions(&mut dp);
        drop(dp);
        let dir = &lab.pins.0;
        for name in [
            "DROPS",
            "HELLO_CONFIG",
            "COOKIE_KEYS",
            "HELLO_STATE",
            "HELLO_SOURCES",
            "SESSION_STATS",
            "ENDPOINTS",
        ] {
            std::fs::remove_file(dir.join(name)).unwrap();
        }
        pin_old_drops(&dir.join("DROPS"));
        pin_old_session_stats(&dir.join("SESSION_STATS"), 4096);
        let mut dp = load(&lab);
        let info = aya::maps::MapInfo::from_pin(dir.join("DROPS")).unwrap();
        assert_eq!(info.max_entries(), counters::SLOTS);
        let info = aya::maps::MapInfo::from_pin(dir.join("SESSION_STATS")).unwrap();
        assert_eq!(info.value_size() as usize, size_of::<SessionStats>());
        assert!(dp.session(S_V4).unwrap().is_some(), "sessions kept");
        assert!(
            dp.session_copy(S_V4).is_some(),
            "and their slot copies written"
        );
        let (c, g) = (v4("10.10.1.2"), v4("10.10.1.1"));
        let frame = Udp::new(c, 40000, g, PORT).build(&jvpn(msg_type::DATA, S_V4, 1, 64));
        let before = dp.drops().unwrap();
        let r = run(dp.program(RELAY_PROGRAM).unwrap(), &frame, lab.c0);
        assert_eq!(r.action, XDP_REDIRECT);
        assert_eq!(delta(&before, &dp.drops().unwrap()), [("next_hop_fib", 1)]);
        assert_eq!(dp.session_stats(S_V4).unwrap().unwrap().up_packets, 1);
        assert_eq!(dp.gate_config().unwrap(), Default::default(), "gate off");
        let (c4, g4c) = (v4("10.10.1.2"), v4("10.10.1.1"));
        rejected(
            &mut dp,
            lab.c0,
            "hello, gate off",
            &Udp::new(c4, 40000, g4c, PORT).build(&hello(None)),
            XDP_PASS,
            None,
        );
        rejected(
            &mut dp,
            lab.c0,
            "counting into the new DROPS",
            &Udp::new(c4, 40000, g4c, PORT).build(&jvpn(msg_type::DATA, 0xdead, 1, 64)),
            XDP_DROP,
            Some(counters::UNKNOWN_SESSION),
        );
        dp.set_gate(&GateLimits::default()).unwrap();
        assert!(dp.cookie_keys().unwrap().iter().all(|k| !k.is_zero()));
        // `datapath status` reads an old DROPS without failing (missing slots are 0).
        drop(dp);
        std::fs::remove_file(dir.join("DROPS")).unwrap();
        pin_old_drops(&dir.join("DROPS"));
        let p = jvpn_ctl::datapath::Pinned::open(dir).unwrap();
        assert_eq!(p.drops().unwrap(), [0; counters::COUNT as usize]);
    });
}

/// Per-packet cost of the gate's paths (`BPF_PROG_TEST_RUN`, kernel-timed):
/// `cargo test -p jvpn-tests --test xdp_packets gate_cost -- --ignored --nocapture`.
/// Frames the program passes or drops untouched are timed in repeat mode; the COOKIE
/// (the frame is rewritten, so a repeat would time the reply) as the median of single
/// runs, next to the passed HELLO timed the same way.
#[test]
#[ignore = "a measurement, not a check"]
fn gate_cost() {
    require_root!();
    let lab = lab();
    lab.ns.run(|| {
        let mut dp = load(&lab);
        install_sessions(&mut dp);
        let (c4, g4c) = (v4("10.10.1.2"), v4("10.10.1.1"));
        let from = Udp::new(c4, 40000, g4c, PORT);
        let unknown = from.build(&jvpn(msg_type::DATA, 0xdead, 9, 100));
        let hello_f = from.build(&hello(None));
        let ka = from.build(&jvpn(msg_type::KEEPALIVE, S_V4, 1, 52));
        let n = 100_000;
        let cost = |dp: &mut Datapath, f: &[u8]| {
            jvpn_tests::testrun::ns_per_run(dp.program(RELAY_PROGRAM).unwrap(), f, lab.c0, n)
        };
        let single = |dp: &mut Datapath, f: &[u8]| {
            let mut v: Vec<f64> = (0..1000)
                .map(|_| {
                    jvpn_tests::testrun::ns_per_run(
                        dp.program(RELAY_PROGRAM).unwrap(),
                        f,
                        lab.c0,
                        1,
                    )
                })
                .collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let off = (
            cost(&mut dp, &unknown),
            cost(&mut dp, &hello_f),
            cost(&mut dp, &ka),
        );
        // Budgets too large to run out during the measurement.
        let big = GateLimits {
            hello_budget_pps: 10_000_000,
            hello_budget_burst: 1_000_000,
            control_binding_pps: 10_000_000,
            control_binding_burst: 1_000_000,
            ..GateLimits::default()
        };
        dp.set_gate(&big).unwrap();
        let on = (
            cost(&mut dp, &unknown),
            cost(&mut dp, &hello_f),
            cost(&mut dp, &ka),
        );
        let pass_single = single(&mut dp, &hello_f);
        dp.set_gate(&small(100)).unwrap();
        spend(&mut dp, lab.c0, 51);
        assert_eq!(send(&mut dp, lab.c0, &hello_f).0, XDP_TX);
        let cookie = single(&mut dp, &hello_f);
        eprintln!(
            "ns per packet, gate off / on: DATA of an unknown session {:.0} / {:.0}, HELLO \
             passed {:.0} / {:.0}, KEEPALIVE {:.0} / {:.0}; single runs: HELLO passed \
             {pass_single:.0}, HELLO answered with a COOKIE under load {cookie:.0}",
            off.0, on.0, off.1, on.1, off.2, on.2
        );
    });
}
