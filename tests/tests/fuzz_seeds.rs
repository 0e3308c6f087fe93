//! The fuzz targets' seed inputs (`tests/fuzz/corpus/<target>/seed-*`): valid
//! frames, messages, link bodies and configurations, from which libFuzzer mutates
//! its way past the checks that random bytes never pass (an empty corpus left the
//! relay target at 21 edges after 10 M executions). This test makes them and
//! checks that the committed ones are the same; `JVPN_WRITE_FUZZ_SEEDS=1` writes
//! them after a format change.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
};

use jvpn_common::wire::msg_type;
use jvpn_ctl::proto::{
    Body, Control, Hint, LinkMsg, ReattachCause, ReattachRequest, TransportKind, data,
    link::link_type,
};
use jvpn_tests::frames::{Udp, jvpn};

fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    // relay: the route byte, then an Ethernet frame carrying DATA to the port.
    let v4: [IpAddr; 2] = ["10.1.0.2".parse().unwrap(), "10.1.0.1".parse().unwrap()];
    let v6: [IpAddr; 2] = ["fd00::2".parse().unwrap(), "fd00::1".parse().unwrap()];
    for (name, [src, dst], vlan, no_sum) in [
        ("v4", v4, None, false),
        ("v4-vlan", v4, Some(7), false),
        ("v4-nosum", v4, None, true),
        ("v6", v6, None, false),
    ] {
        let mut u = Udp::new(src, 40_000, dst, 51_820);
        u.vlan = vlan;
        u.no_udp_checksum = no_sum;
        let frame = u.build(&jvpn(msg_type::DATA, 0x1122_3344_5566_7788, 9, 64));
        for ctl in [0u8, 1, 2, 4] {
            out.push((
                "relay",
                format!("{name}-{ctl}"),
                [&[ctl][..], &frame].concat(),
            ));
        }
    }
    // control: every body, MACed with the target's key.
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[7; 32]);
    let hint = Hint {
        recovery_window_ms: 30_000,
        keepalive_interval_ms: 1_000,
        transport_loss_ttl_ms: 3_000,
        session_ttl_s: 86_400,
    };
    let bodies = [
        (
            "request",
            Body::ReattachRequest(
                ReattachRequest::new(
                    1_700_000_000_000,
                    [3; 16],
                    TransportKind::Cellular,
                    ReattachCause::Recovery,
                    b"seed",
                )
                .unwrap(),
            ),
        ),
        ("challenge", Body::ReattachChallenge { challenge: [4; 16] }),
        ("confirm", Body::ReattachConfirm { challenge: [4; 16] }),
        (
            "ack",
            Body::ReattachAck {
                generation: 2,
                hint,
            },
        ),
        ("denied", Body::ReattachDenied { reason: 3 }),
        (
            "keepalive",
            Body::Keepalive {
                ts_ms: 1_700_000_000_000,
                pad: 0,
            },
        ),
        (
            "keepalive-ack",
            Body::KeepaliveAck {
                echo_ts_ms: 1_700_000_000_000,
                generation: 2,
                up_forwarded: 77,
                flags: 1,
            },
        ),
        ("close", Body::Close { reason: 1 }),
    ];
    for (name, body) in bodies {
        let c = Control {
            session_id: 0x1122_3344_5566_7788,
            ctr: 5,
            body,
        };
        out.push(("control", name.into(), c.encode(&key).unwrap()));
    }
    // link: mode 1 (a body of a type), one per message.
    let ret: SocketAddr = "10.9.0.1:51820".parse().unwrap();
    for msg in [
        LinkMsg::Install {
            session_id: 9,
            tunnel_addr: "10.77.0.2".parse().unwrap(),
            tunnel6: None,
            c2x: [1; 32],
            x2c: [2; 32],
            ret,
            epoch: 3,
        },
        LinkMsg::Revoke {
            session_id: 9,
            epoch: 3,
        },
        LinkMsg::Ack {
            session_id: 9,
            acked_type: link_type::INSTALL,
        },
        LinkMsg::Ping { nonce: 5 },
        LinkMsg::Pong {
            nonce: 5,
            boot: 6,
            sessions: 7,
        },
    ] {
        let name = format!("{:?}", msg.type_code());
        out.push((
            "link",
            name,
            [&[3, msg.type_code()][..], &msg.body()].concat(),
        ));
    }
    // link: a dual-stack session's INSTALL (its IPv6 address after the epoch).
    let dual = LinkMsg::Install {
        session_id: 9,
        tunnel_addr: "10.77.0.2".parse().unwrap(),
        tunnel6: Some("fd00:77::2".parse().unwrap()),
        c2x: [1; 32],
        x2c: [2; 32],
        ret,
        epoch: 3,
    };
    out.push((
        "link",
        "1-dual".into(),
        [&[3, dual.type_code()][..], &dual.body()].concat(),
    ));
    // data: (session id, counter, plaintext) with an IPv4 packet and an MTU notice.
    let mut d = Vec::new();
    d.extend_from_slice(&9u64.to_le_bytes());
    d.extend_from_slice(&100u64.to_le_bytes());
    out.push((
        "data",
        "mtu-notice".into(),
        [&d[..], &data::tunnel_ctl::mtu_notice(1400)].concat(),
    ));
    let inner = Udp::new(
        "10.77.0.2".parse().unwrap(),
        5555,
        "198.51.100.7".parse().unwrap(),
        7,
    )
    .build(b"hello");
    out.push(("data", "ipv4".into(), [&d[..], &inner[14..]].concat()));
    // config: a gateway, a client and an exit configuration as the lab writes them.
    let configs = [
        (
            "gateway",
            "interfaces = [\"eth0\"]\nidentity = \"/k\"\npeers = \"/p\"\nstate_dir = \"/s\"\n\
             [exit]\ndata = \"10.9.0.2:51820\"\nlink = \"10.9.0.2:51821\"\nlink_key = \"/l\"\n\
             [pool]\ncidr = \"10.99.0.0/22\"\nreserved = [\"10.99.0.1\"]\n\
             [policy]\nmax_switches_per_minute = 10\n[limits]\nhello_budget_pps = 4000\n",
        ),
        (
            "client",
            "identity = \"/k\"\ngateway_public_key = \"0000000000000000000000000000000000000000000000000000000000000000\"\n\
             [[transport]]\nname = \"wifi\"\nkind = \"wifi\"\nbind = \"10.0.0.2:40000\"\ngateway = \"10.0.0.1:51820\"\n\
             [health]\nreturn_after_ms = 1000\n",
        ),
        (
            "exit",
            "listen = \"10.9.0.2:51820\"\nlink_listen = \"10.9.0.2:51821\"\nlink_key_file = \"/l\"\ntun_addr = \"10.99.0.1/22\"\n",
        ),
    ];
    for (name, text) in configs {
        out.push(("config", name.into(), text.as_bytes().to_vec()));
    }
    // protocol: a seed, then (operation, argument) pairs: traffic, a link down and
    // up, a rebinding, a replay, a redirect and a changed byte, faults, a kill.
    let ops: &[&[u8]] = &[
        &[3, 10, 0, 50, 1, 0, 0, 100, 1, 0x80, 0, 100],
        &[2, 5, 0, 100, 4, 1, 3, 5, 2, 7, 6, 3, 2, 1, 0, 100],
        &[7, 9, 3, 10, 0, 200, 8, 0, 0, 100],
    ];
    for (i, o) in ops.iter().enumerate() {
        out.push((
            "protocol",
            format!("{i}"),
            [&(i as u64 + 1).to_le_bytes()[..], o].concat(),
        ));
    }
    out
}

fn corpus() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus")
}

#[test]
fn the_committed_seeds_are_current() {
    let write = std::env::var_os("JVPN_WRITE_FUZZ_SEEDS").is_some();
    let mut stale = Vec::new();
    for (target, name, bytes) in seeds() {
        let path = corpus().join(target).join(format!("seed-{name}"));
        if write {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        } else if std::fs::read(&path).ok().as_deref() != Some(&bytes[..]) {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "fuzz seeds missing or stale (JVPN_WRITE_FUZZ_SEEDS=1 cargo test -p jvpn-tests \
         --test fuzz_seeds writes them): {stale:?}"
    );
}

/// The configuration seeds are accepted, so the fuzzer starts from valid files.
#[test]
fn the_configuration_seeds_parse() {
    for (target, name, bytes) in seeds() {
        if target != "config" {
            continue;
        }
        let text = std::str::from_utf8(&bytes).unwrap();
        let ok = match name.as_str() {
            "gateway" => jvpn_ctl::gateway::GatewayConfig::parse(text)
                .map(drop)
                .map_err(|e| e.to_string()),
            "client" => jvpn_ctl::client::ClientConfig::parse(text)
                .map(drop)
                .map_err(|e| e.to_string()),
            _ => jvpn_ctl::exit::ConfigFile::parse(text)
                .map(drop)
                .map_err(|e| e.to_string()),
        };
        assert!(ok.is_ok(), "{name}: {ok:?}");
    }
}
