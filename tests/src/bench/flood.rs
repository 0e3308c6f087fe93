//! Control-plane flood protection (issue 16): what legitimate clients get from the
//! real gateway while spoofed HELLOs and forged REATTACH_REQUESTs arrive at line rate.
//!
//! The lab of `cargo xtask run` (the release gateway and exit as processes, no agent)
//! gets two more links into the gateway namespace, `f-hello ⇄ g-fhello` and
//! `f-reatt ⇄ g-freatt`, from a flood namespace; the gateway runs its relay on them
//! too (its `interfaces` list, restarted once). The live-frames generator sends on
//! them, addressed to the gateway's Wi-Fi address and port, where the legitimate
//! clients talk to it:
//!
//! * **HELLOs** from a random source in `100.64.0.0/10` (routed back to the flood
//!   namespace): the allowed client key's `id_pub`, a fresh timestamp, random
//!   `eph_pub` and nonce and a signature with a random first word (it never
//!   verifies), every frame's IPv4 and UDP checksums updated;
//! * **REATTACH_REQUESTs** from a random source in `198.18.0.0/15`, cycling over the
//!   session ids of the victim sessions, random counter, nonce and proof.
//!
//! Each flood has its own link, so the figures per link are exact and neither shares a
//! ring with the legitimate clients (a veth ring shared with a 1 Mpps generator would
//! drop their packets whatever the gateway does); the gate is per gateway, not per
//! interface. XDP's COOKIE replies (`XDP_TX`) come back to an `xdp_sink` on the flood
//! ends, which counts and drops them.
//!
//! The legitimate workload, from the client namespace over Wi-Fi, the same twice, first
//! unloaded, then under the flood: `handshakes` fresh handshakes one after the other
//! (10 per second at most; each must see ESTABLISHED within 2 s; a COOKIE makes the
//! client send a fresh HELLO with the cookie at once, a silence a fresh HELLO after
//! 200 ms), then `reattaches` moves of one session between two sockets (REQUEST →
//! CHALLENGE → CONFIRM → ACK timed at the client, retransmitted after 200 ms). All the
//! while, keepalives (one a second) on the victims and two bystander sessions; any of
//! their state changes away from ATTACHED at the gateway is `spurious_volatile`. The
//! gateway's policy judges them, idle (no tunnel data), by the short loss TTL
//! (`idle_loss_ttl_ms` = `transport_loss_ttl_ms`, 3 s): three seconds without an
//! answered keepalive make a session VOLATILE.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    path::Path,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use jvpn_common::wire::{HEADER_LEN, HELLO_LEN, Kind, WireHeader, msg_type};
use jvpn_ctl::{
    bench::{
        frame::FrameSpec,
        pktgen::{DEFAULT_BATCH, Flood, Generator, Limit, Options, Summary},
        sink::{Sink, SinkMode},
    },
    control::api::{EventRecord, SessionId, Stats},
    datapath::AttachMode,
    lab::{
        gateway::Transport,
        netns::{Netns, veth},
    },
    proto::{self, Body, ClientHandshake, Control, TransportKind, Unverified},
    session::{Reason, State},
};

use super::{
    Bench, percentile,
    progress::Phase,
    schema::{self, FloodGenerator},
    stopped,
};
use crate::{
    gwlab::{EXIT_TUN, GwLab},
    tclient::{TestClient, Via, now_ms},
};

/// The flood namespace's ends, the gateway's ends, and their addresses (/24 each).
const LINKS: [FloodLink; 2] = [
    FloodLink {
        gen_if: "f-hello",
        gw_if: "g-fhello",
        gen_ip: Ipv4Addr::new(10, 77, 7, 2),
        gw_ip: Ipv4Addr::new(10, 77, 7, 1),
        prefix: Ipv4Addr::new(100, 64, 0, 0),
        prefix_len: 10,
    },
    FloodLink {
        gen_if: "f-reatt",
        gw_if: "g-freatt",
        gen_ip: Ipv4Addr::new(10, 77, 8, 2),
        gw_ip: Ipv4Addr::new(10, 77, 8, 1),
        prefix: Ipv4Addr::new(198, 18, 0, 0),
        prefix_len: 15,
    },
];

struct FloodLink {
    gen_if: &'static str,
    gw_if: &'static str,
    gen_ip: Ipv4Addr,
    gw_ip: Ipv4Addr,
    /// The flood's spoofed sources: routed back to this link at the gateway.
    prefix: Ipv4Addr,
    prefix_len: u8,
}

/// The gateway's `[limits]` at their maxima: no HELLO budget, cookie or control
/// budget ever bites.
const OPEN_LIMITS: &str = "\n[limits]\nhello_budget_pps = 10000000\nhello_budget_burst = 1000000\n\
    hello_per_source_pps = 10000000\nhello_per_source_burst = 1000000\n\
    control_binding_pps = 10000000\ncontrol_binding_burst = 1000000\n\
    control_other_pps = 10000000\ncontrol_other_burst = 1000000\n";

/// Sessions under a REATTACH_REQUEST flood, and bystanders: all send keepalives.
const VICTIMS: usize = 4;
const BYSTANDERS: usize = 2;
/// Client ports: the reattaching client's two sockets, the keepalive sessions', the
/// handshakes' (all on the client's Wi-Fi address, 10.77.1.2).
const REATTACH_PORTS: [u16; 2] = [40100, 40101];
const KEEPALIVE_PORT: u16 = 40200;
const HANDSHAKE_PORT: u16 = 40300;

/// Each handshake must be done this quickly (the goal).
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(2);
const REATTACH_DEADLINE: Duration = Duration::from_secs(2);
/// A silent exchange is retransmitted (a fresh message) after this long.
const RETRY: Duration = Duration::from_millis(200);
/// At most one handshake (and one reattach) started per this interval.
const PACE: Duration = Duration::from_millis(100);
const KEEPALIVE_EVERY: Duration = Duration::from_secs(1);
/// Flood before the loaded window opens, so the gate has settled.
const WARMUP: Duration = Duration::from_secs(1);

/// Payload offsets of the random words: a HELLO's `eph_pub`, nonce and the first
/// word of its signature; a request's counter, nonce and proof.
const HELLO_RANDOM: [u16; 7] = [20, 28, 36, 44, 92, 100, 108];
const REATTACH_RANDOM: [u16; 7] = [12, 28, 36, 48, 56, 64, 72];
/// A REATTACH_REQUEST without a label: header, ts, nonce, 4 bytes, proof.
const REATTACH_LEN: usize = HEADER_LEN + 8 + 16 + 4 + 32;

pub fn run(b: &mut Bench) -> Result<()> {
    let p = b.profile;
    let phase = Phase::new(
        "flood",
        2 * (p.flood_handshakes + p.flood_reattaches) as u64,
    );
    phase.say("starting gateway and exit");
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| measure(b, &phase)))
        .map_err(|e| {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            anyhow::anyhow!("the flood phase panicked: {msg}")
        })??;
    phase.done(out);
    Ok(())
}

fn measure(b: &mut Bench, phase: &Phase) -> Result<String> {
    let p = b.profile;
    let mut lab = GwLab::start(
        "bfl",
        "max_switches_per_minute = 100000\nidle_loss_ttl_ms = 3000\n",
    );
    let flood_ns = Netns::new(crate::unique("jbf"))?;
    for l in &LINKS {
        veth(&flood_ns, l.gen_if, &lab.lab.gw, l.gw_if)
            .with_context(|| format!("creating veth {}/{}", l.gen_if, l.gw_if))?;
        flood_ns.ip(&["addr", "add", &format!("{}/24", l.gen_ip), "dev", l.gen_if])?;
        lab.lab
            .gw
            .ip(&["addr", "add", &format!("{}/24", l.gw_ip), "dev", l.gw_if])?;
        lab.lab.gw.ip(&[
            "route",
            "add",
            &format!("{}/{}", l.prefix, l.prefix_len),
            "via",
            &l.gen_ip.to_string(),
            "dev",
            l.gw_if,
        ])?;
        lab.lab
            .gw
            .neigh_permanent(&l.gen_ip.to_string(), &flood_ns.mac_str(l.gen_if)?, l.gw_if)?;
    }
    // The relay on the flood links too: the gateway attaches to what its configuration
    // lists.
    let cfg = lab.dir.join("gateway.toml");
    let text = std::fs::read_to_string(&cfg)?;
    let listed = "interfaces = [\"g-wifi\", \"g-lte\", \"g-exit\"]";
    ensure!(text.contains(listed), "the lab's gateway.toml changed");
    let more = LINKS
        .iter()
        .map(|l| format!(", \"{}\"", l.gw_if))
        .collect::<String>();
    let mut text = text.replace(
        listed,
        &format!("interfaces = [\"g-wifi\", \"g-lte\", \"g-exit\"{more}]"),
    );
    // JVPN_FLOOD_GATE=open: the gate's limits as wide as the gateway takes them, so
    // that XDP hands every HELLO and control message to the controller, as before
    // the gate (the picture without it, from the same build).
    let gate = std::env::var("JVPN_FLOOD_GATE").unwrap_or_else(|_| "default".into());
    match gate.as_str() {
        "default" => {}
        "open" => text.push_str(OPEN_LIMITS),
        other => bail!("JVPN_FLOOD_GATE={other}: `default` or `open`"),
    }
    std::fs::write(&cfg, text)?;
    lab.stack.restart("gateway", false)?;
    // The COOKIEs (and anything else) the gateway sends back down the flood links.
    let sinks: Vec<Sink> = LINKS
        .iter()
        .map(|l| flood_ns.run(|| Sink::attach(l.gen_if, 0, SinkMode::Count, AttachMode::Native)))
        .collect::<Result<_, _>>()?;
    let pid = lab.stack.pid("gateway").context("the gateway's pid")?;

    phase.say("establishing the victim, bystander and reattaching sessions");
    let gw = Transport::Wifi.gw_addr();
    let wifi = |port| SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 77, 1, 2), port));
    let exit_tun: Ipv4Addr = EXIT_TUN.parse()?;
    let connect = |binds: &[SocketAddr]| {
        TestClient::connect_in(
            &lab.lab.client,
            binds,
            Via(0, gw),
            &lab.client_id,
            &lab.gateway_pub,
            exit_tun,
        )
    };
    let client = connect(&REATTACH_PORTS.map(wifi));
    let generation = lab
        .session(client.id())
        .context("the reattaching session at the gateway")?
        .generation;
    let mut mover = Mover {
        client,
        bound: 0,
        generation,
        last_keepalive: Instant::now(),
    };
    let keepers: Vec<TestClient> = (0..VICTIMS + BYSTANDERS)
        .map(|i| connect(&[wifi(KEEPALIVE_PORT + i as u16)]))
        .collect();
    let victim_ids: Vec<u64> = keepers[..VICTIMS].iter().map(TestClient::id).collect();
    let keeper_ids: Vec<u64> = keepers.iter().map(TestClient::id).collect();
    let hs_sock = lab.client_udp(&wifi(HANDSHAKE_PORT).to_string(), Duration::from_millis(10));

    // The two floods, checked once on single frames before they are sent.
    let gen_cpus = flood_cpus(b)?;
    let quick = b.opts.quick;
    let templates = flood_templates(&lab, &flood_ns, &victim_ids)?;
    let mut checks = BTreeMap::new();
    let mut gen_ns = BTreeMap::new();
    for (i, (name, opts, fl)) in templates.iter().enumerate() {
        let (ns, ok) = flood_ns.run(|| check_template(opts, fl, &LINKS[i], quick))?;
        checks.insert(name.to_string(), ok);
        gen_ns.insert(name.to_string(), ns);
    }
    let data_ns = flood_ns.run(|| data_frame_ns(&templates[0].1, quick))?;
    gen_ns.insert("data".into(), data_ns);

    let stop_keepalives = AtomicBool::new(false);
    let keepalives = KeepaliveCounts::default();
    let (unloaded, loaded, flood) = std::thread::scope(|s| -> Result<_> {
        let ka = s.spawn(|| keepalive_loop(keepers, &stop_keepalives, &keepalives));
        let r = (|| -> Result<_> {
            phase.say("unloaded: handshakes, reattaches, keepalives");
            let unloaded = window(&lab, pid, &keeper_ids, || {
                workload(&lab, &hs_sock, &mut mover, gw, &p, phase)
            })?;
            phase.say(format!(
                "under a flood of {} HELLOs/s and {} REATTACH_REQUESTs/s",
                p.flood_hello_pps, p.flood_reattach_pps
            ));
            let gen_stop = AtomicBool::new(false);
            let flood_result = std::thread::scope(|fs| -> Result<_> {
                let gens: Vec<_> = templates
                    .iter()
                    .zip([p.flood_hello_pps, p.flood_reattach_pps])
                    .zip(&gen_cpus)
                    .map(|(((_, opts, fl), rate), &cpu)| {
                        let mut opts = opts.clone();
                        opts.rate = Some(rate);
                        opts.cpus = vec![cpu];
                        let (fl, gen_stop, flood_ns) = (fl.clone(), &gen_stop, &flood_ns);
                        fs.spawn(move || {
                            flood_ns.run(|| -> Result<Summary> {
                                let g = Generator::flood(opts, fl)?;
                                Ok(g.run(gen_stop, |_| {})?)
                            })
                        })
                    })
                    .collect();
                let sinks_before: Vec<_> =
                    sinks.iter().map(|s| s.stats()).collect::<Result<_, _>>()?;
                let measured = (|| {
                    let t = Instant::now();
                    while t.elapsed() < WARMUP {
                        stopped()?;
                        ensure!(
                            !gens.iter().any(|g| g.is_finished()),
                            "a flood generator stopped early"
                        );
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    window(&lab, pid, &keeper_ids, || {
                        workload(&lab, &hs_sock, &mut mover, gw, &p, phase)
                    })
                })();
                gen_stop.store(true, Ordering::Relaxed);
                let summaries: Vec<Result<Summary>> = gens
                    .into_iter()
                    .map(|g| g.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                    .collect();
                let sinks_after: Vec<_> =
                    sinks.iter().map(|s| s.stats()).collect::<Result<_, _>>()?;
                // A generator's own error is the cause of a window cut short: first.
                let summaries = summaries
                    .into_iter()
                    .collect::<Result<Vec<_>>>()
                    .context("a flood generator")?;
                let loaded = measured?;
                let returned: Vec<u64> = sinks_after
                    .iter()
                    .zip(&sinks_before)
                    .map(|(a, b)| a.frames - b.frames)
                    .collect();
                Ok((loaded, summaries, returned))
            })?;
            Ok((unloaded, flood_result))
        })();
        stop_keepalives.store(true, Ordering::Relaxed);
        ka.join().unwrap_or_else(|e| std::panic::resume_unwind(e))?;
        let (unloaded, (loaded, summaries, returned)) = r?;
        Ok((unloaded, loaded, (summaries, returned)))
    })?;
    let (summaries, returned) = flood;

    // The floods as they were sent: frames the flood links' peers accepted.
    let rate = |s: &Summary| {
        let accepted = s.veth_xmit.unwrap_or(s.sent) as f64;
        if s.seconds > 0.0 {
            accepted / s.seconds
        } else {
            0.0
        }
    };
    let hello_pps = rate(&summaries[0]).round();
    let reattach_pps = rate(&summaries[1]).round();
    let flood_generators = summaries
        .iter()
        .zip(["hello", "reattach"])
        .zip(&returned)
        .map(|((s, name), &back)| FloodGenerator {
            flood: name.into(),
            sent: s.sent,
            seconds: (s.seconds * 1000.0).round() / 1000.0,
            accepted: s.veth_xmit,
            refused: s.veth_xmit_errors,
            frame_bytes: s.frame_bytes,
            cpu: s.cpus.clone(),
            returned_frames: back,
        })
        .collect();
    let over = |a: Option<f64>, d: Option<f64>| match (a, d) {
        (Some(a), Some(d)) if d > 0.0 => Some((a / d * 100.0).round() / 100.0),
        _ => None,
    };
    let (r99, u99) = (loaded.reattach_p(0.99), unloaded.reattach_p(0.99));
    b.out.flood = Some(schema::Flood {
        flood_gate: gate,
        flood_hello_pps: hello_pps,
        flood_reattach_pps: reattach_pps,
        flood_hello_target_pps: p.flood_hello_pps,
        flood_reattach_target_pps: p.flood_reattach_pps,
        flood_generators,
        flood_generator_ns_per_frame: gen_ns,
        flood_template_checks: checks,
        flood_victims: VICTIMS,
        flood_keepalive_sessions: VICTIMS + BYSTANDERS,
        keepalives_sent: keepalives.sent.load(Ordering::Relaxed),
        keepalives_answered: keepalives.answered.load(Ordering::Relaxed),
        legit_reattach_p99_over_unloaded: over(r99, u99),
        under_flood: loaded.record(),
        unloaded: unloaded.record().into(),
    });
    let summary = format!(
        "flood {hello_pps:.0} HELLOs/s + {reattach_pps:.0} REATTACH_REQUESTs/s: handshakes {}/{} \
         within 2 s (unloaded {}/{}), p50 {} ms; reattach p99 {} µs (unloaded {} µs); \
         {} spurious VOLATILE; event log {:.0} B/s; controller {:.2} cores; {} HELLO signatures \
         checked",
        loaded.handshakes_ok(),
        loaded.handshake_ms.len(),
        unloaded.handshakes_ok(),
        unloaded.handshake_ms.len(),
        fmt_opt(loaded.handshake_p(0.5)),
        fmt_opt(r99),
        fmt_opt(u99),
        loaded.spurious,
        loaded.event_log_bps,
        loaded.controller_cpu,
        loaded.sig_verifications,
    );
    drop(sinks);
    drop(lab);
    drop(flood_ns);
    Ok(summary)
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or("—".into(), |v| format!("{v:.0}"))
}

/// The HELLO flood's CPU (the generator's first) and the reattach flood's (another
/// when there is one).
fn flood_cpus(b: &Bench) -> Result<[usize; 2]> {
    let allowed = jvpn_ctl::bench::cpus::allowed()?;
    let first = *b.opts.gen_cpus.first().context("no generator CPU")?;
    let other = allowed
        .iter()
        .copied()
        .find(|&c| c != first)
        .unwrap_or(first);
    Ok([first, other])
}

/// (name, generator options, flood) for the HELLO and the REATTACH_REQUEST floods.
fn flood_templates(
    lab: &GwLab,
    flood_ns: &Netns,
    victims: &[u64],
) -> Result<Vec<(&'static str, Options, Flood)>> {
    let gw_mac = |dev: &str| lab.lab.gw.mac(dev);
    let rng = ring::rand::SystemRandom::new();
    // A real HELLO of the allowed key: its signature breaks with the random words.
    let (_, hello) = ClientHandshake::start(&lab.client_id, &lab.gateway_pub, now_ms(), &rng)
        .map_err(|e| anyhow::anyhow!("building a HELLO: {e}"))?;
    ensure!(hello.len() == HELLO_LEN, "a HELLO of {} bytes", hello.len());
    let mut req = Vec::with_capacity(REATTACH_LEN);
    req.extend_from_slice(&WireHeader::new(msg_type::REATTACH_REQUEST, 0, 0).to_bytes());
    req.extend_from_slice(&now_ms().to_be_bytes());
    req.extend_from_slice(&[0; 16]);
    // proto_ver 1, kind wifi, cause recovery, no label.
    req.extend_from_slice(&[1, 1, 1, 0]);
    req.extend_from_slice(&[0; 32]);
    ensure!(req.len() == REATTACH_LEN);
    let gw = Transport::Wifi.gw_addr();
    let mut out = Vec::new();
    for (i, (name, payload, ids, random)) in [
        ("hello", hello, Vec::new(), HELLO_RANDOM),
        ("reattach", req, victims.to_vec(), REATTACH_RANDOM),
    ]
    .into_iter()
    .enumerate()
    {
        let l = &LINKS[i];
        let src_mac = flood_ns.mac(l.gen_if)?;
        let opts = Options {
            iface: l.gen_if.into(),
            frame: FrameSpec {
                src_mac,
                dst_mac: gw_mac(l.gw_if)?,
                src: SocketAddr::V4(SocketAddrV4::new(l.prefix, 40000)),
                dst: gw,
                payload_len: payload.len(),
                session_id: 1,
            },
            sessions: 1,
            cpus: vec![jvpn_ctl::bench::cpus::allowed()?[0]],
            rate: None,
            limit: Limit::Duration(Duration::from_secs(3600)),
            batch: DEFAULT_BATCH,
            stamp_time: false,
            src_ports: None,
        };
        let fl = Flood {
            payload,
            ids,
            random_words: random.to_vec(),
            src_prefix: l.prefix_len,
            reset_bounds: true,
        };
        out.push((name, opts, fl));
    }
    Ok(out)
}

/// Runs the flood's program twice on its template (`BPF_PROG_TEST_RUN`, single
/// frames) and checks each frame as a receiver would: valid checksums (etherparse),
/// the right message with the right length, a source inside the prefix, and fresh
/// random words. Returns the program's cost per frame (repeat mode, ns) and `true`.
fn check_template(opts: &Options, fl: &Flood, l: &FloodLink, quick: bool) -> Result<(f64, bool)> {
    let g = Generator::flood(opts.clone(), fl.clone())?;
    let prog = g.program()?;
    let template = g.frame().to_vec();
    let lead = g.lead();
    let cpu = opts.cpus[0];
    let frames = std::thread::scope(|s| {
        s.spawn(|| -> Result<Vec<Vec<u8>>> {
            jvpn_ctl::bench::cpus::pin_current_thread(cpu)?;
            let mut frame = template.clone();
            let mut out = Vec::new();
            for i in 0..3 {
                let r = crate::testrun::run(prog, &frame, 1);
                ensure!(r.action == crate::testrun::XDP_TX, "action {}", r.action);
                ensure!(
                    r.out.len() == template.len() - lead,
                    "{} bytes out",
                    r.out.len()
                );
                out.push(r.out.clone());
                // The next run gets the page as this one left it, its lead in front;
                // the second one as a gateway's COOKIE reply leaves a HELLO's (the
                // headers and the first 52 bytes of the payload rewritten), or a
                // rewriting relay a request's (the headers).
                frame = template[..lead].to_vec();
                frame.extend(&r.out);
                if i == 0 {
                    let n = if fl.ids.is_empty() {
                        42 + 52
                    } else {
                        42 + HEADER_LEN
                    };
                    frame[lead..lead + n].fill(0xc5);
                }
            }
            Ok(out)
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })?;
    let mask = fl.src_ip_mask();
    let mut payloads = Vec::new();
    for f in &frames {
        let payload = crate::frames::verify_checksums(f);
        ensure!(
            payload.len() == fl.payload.len(),
            "payload of {} bytes",
            payload.len()
        );
        let src = Ipv4Addr::new(f[26], f[27], f[28], f[29]);
        ensure!(
            u32::from(src) & !mask == u32::from(l.prefix),
            "source {src} outside {}/{}",
            l.prefix,
            l.prefix_len
        );
        let (h, kind) =
            WireHeader::parse(&payload).map_err(|e| anyhow::anyhow!("header: {e:?}"))?;
        match fl.ids.is_empty() {
            true => ensure!(kind == Kind::Hello, "not a HELLO: {kind:?}"),
            false => ensure!(
                kind == Kind::Control && fl.ids.contains(&h.session_id()),
                "not a victim's control message: {kind:?} {:#x}",
                h.session_id()
            ),
        }
        // Only the random words differ from the template's payload.
        for (i, (a, t)) in payload.iter().zip(&fl.payload).enumerate() {
            let random = fl
                .random_words
                .iter()
                .any(|&w| (usize::from(w)..usize::from(w) + 8).contains(&i));
            let sid = !fl.ids.is_empty() && (4..12).contains(&i);
            ensure!(random || sid || a == t, "payload byte {i} changed");
        }
        payloads.push(payload);
    }
    ensure!(
        payloads[0] != payloads[1] && frames[0][26..30] != frames[1][26..30],
        "two frames alike"
    );
    // The cost per frame in repeat mode, which keeps a moved frame start from run to
    // run: without the lead bytes (one `adjust_head` call less than live).
    let g = Generator::flood(
        opts.clone(),
        Flood {
            reset_bounds: false,
            ..fl.clone()
        },
    )?;
    let prog = g.program()?;
    let repeat = if quick { 100_000 } else { 2_000_000 };
    let ns = std::thread::scope(|s| {
        s.spawn(|| -> Result<f64> {
            jvpn_ctl::bench::cpus::pin_current_thread(cpu)?;
            let ns = crate::testrun::ns_per_run(prog, g.frame(), 1, repeat);
            ensure!(
                g.counters()?.errors == 0,
                "the generator failed in repeat mode"
            );
            Ok(ns)
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })?;
    Ok(((ns * 10.0).round() / 10.0, true))
}

/// What a DATA frame of the same generator costs (the generator's own baseline).
fn data_frame_ns(opts: &Options, quick: bool) -> Result<f64> {
    let mut o = opts.clone();
    o.frame.payload_len = 64;
    o.frame.session_id = 1;
    let g = Generator::new(o)?;
    let prog = g.program()?;
    let repeat = if quick { 100_000 } else { 2_000_000 };
    let cpu = opts.cpus[0];
    let ns = std::thread::scope(|s| {
        s.spawn(|| -> Result<f64> {
            jvpn_ctl::bench::cpus::pin_current_thread(cpu)?;
            let ns = crate::testrun::ns_per_run(prog, g.frame(), 1, repeat);
            ensure!(
                g.counters()?.errors == 0,
                "the generator failed in repeat mode"
            );
            Ok(ns)
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })?;
    Ok((ns * 10.0).round() / 10.0)
}

#[derive(Default)]
struct KeepaliveCounts {
    sent: AtomicU64,
    answered: AtomicU64,
}

/// One KEEPALIVE a second from each session's binding until `stop`; answers counted.
fn keepalive_loop(
    mut clients: Vec<TestClient>,
    stop: &AtomicBool,
    counts: &KeepaliveCounts,
) -> Result<()> {
    let gw = Transport::Wifi.gw_addr();
    for c in &clients {
        c.socks[0].set_nonblocking(true)?;
    }
    let start = Instant::now();
    let n = clients.len() as u32;
    let mut next: Vec<Instant> = (0..n).map(|i| start + KEEPALIVE_EVERY * i / n).collect();
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        for (c, due) in clients.iter_mut().zip(&mut next) {
            if now >= *due {
                let ka = c.control(Body::Keepalive {
                    ts_ms: now_ms(),
                    pad: 0,
                });
                // A full socket buffer is a lost keepalive, as on a real link.
                let _ = c.socks[0].send_to(&ka, gw);
                counts.sent.fetch_add(1, Ordering::Relaxed);
                *due += KEEPALIVE_EVERY;
            }
            while let Ok((len, _)) = c.socks[0].recv_from(&mut buf) {
                let ok = Unverified::decode(&buf[..len])
                    .ok()
                    .and_then(|u| u.verify(&c.mac).ok().map(|m| m.body.clone()));
                if let Some(Body::KeepaliveAck { .. }) = ok {
                    counts.answered.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// One run of the legitimate workload.
struct Workload {
    /// Per handshake: its time to ESTABLISHED (ms), or `None` (not within 2 s).
    handshake_ms: Vec<Option<f64>>,
    cookies: u64,
    hellos: u64,
    /// Per reattach: request out → ACK in (µs), or `None`.
    reattach_us: Vec<Option<f64>>,
}

fn workload(
    lab: &GwLab,
    sock: &UdpSocket,
    mover: &mut Mover,
    gw: SocketAddr,
    p: &super::Profile,
    phase: &Phase,
) -> Result<Workload> {
    let mut w = Workload {
        handshake_ms: Vec::new(),
        cookies: 0,
        hellos: 0,
        reattach_us: Vec::new(),
    };
    let mut t = Instant::now();
    for _ in 0..p.flood_handshakes {
        stopped()?;
        // The reattaching session must stay alive meanwhile (3 s of silence make it
        // VOLATILE, the recovery window then ends it): a keepalive from its binding.
        mover.keepalive(gw);
        pace(&mut t);
        let h = handshake(lab, sock, gw)?;
        w.cookies += h.cookies;
        w.hellos += h.hellos;
        w.handshake_ms.push(h.ms);
        phase.step();
    }
    for _ in 0..p.flood_reattaches {
        stopped()?;
        pace(&mut t);
        let r = mover.reattach(gw)?;
        w.reattach_us.push(r);
        phase.step();
    }
    Ok(w)
}

/// Waits until `PACE` after the previous start.
fn pace(last: &mut Instant) {
    let due = *last + PACE;
    let now = Instant::now();
    if due > now {
        std::thread::sleep(due - now);
    }
    *last = Instant::now();
}

struct Handshake {
    ms: Option<f64>,
    hellos: u64,
    cookies: u64,
}

/// A fresh client's handshake: HELLO → (COOKIE → HELLO with the cookie) → WELCOME →
/// CONFIRM → ESTABLISHED, then CLOSE (so the sessions do not pile up at the gateway).
/// Every HELLO is a fresh one (a repeated one is a replay to the gateway); any of them
/// may be the one a WELCOME answers.
fn handshake(lab: &GwLab, sock: &UdpSocket, gw: SocketAddr) -> Result<Handshake> {
    let rng = ring::rand::SystemRandom::new();
    let mut buf = [0u8; 2048];
    // What an earlier handshake left in the socket is not for this one.
    sock.set_nonblocking(true)?;
    while sock.recv_from(&mut buf).is_ok() {}
    sock.set_nonblocking(false)?;
    let t0 = Instant::now();
    let deadline = t0 + HANDSHAKE_DEADLINE;
    let mut out = Handshake {
        ms: None,
        hellos: 0,
        cookies: 0,
    };
    let mut cookie: Option<[u8; 16]> = None;
    let mut ts_offset: i64 = 0;
    let mut pending: Vec<ClientHandshake> = Vec::new();
    let mut session: Option<proto::ClientSession> = None;
    let mut resend = t0;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Ok(out);
        }
        if now >= resend {
            match &session {
                None => {
                    let ts = now_ms().saturating_add_signed(ts_offset);
                    let (hs, hello) = ClientHandshake::start_with_cookie(
                        &lab.client_id,
                        &lab.gateway_pub,
                        ts,
                        cookie,
                        &rng,
                    )
                    .map_err(|e| anyhow::anyhow!("HELLO: {e}"))?;
                    let _ = sock.send_to(&hello, gw);
                    out.hellos += 1;
                    pending.push(hs);
                }
                Some(s) => {
                    let _ = sock.send_to(&s.confirm, gw);
                }
            }
            resend = now + RETRY;
        }
        let Ok((len, _)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let msg = &buf[..len];
        match (msg.get(1).copied(), &session) {
            (Some(msg_type::COOKIE), None) => {
                let Ok(c) = proto::Cookie::decode(msg) else {
                    continue;
                };
                if let Some(i) = pending.iter().position(|h| h.nonce() == c.nonce_echo) {
                    pending.remove(i);
                    out.cookies += 1;
                    cookie = Some(c.cookie);
                    resend = Instant::now();
                }
            }
            (Some(msg_type::TIME), None) => {
                let Ok(time) = proto::Time::decode(msg) else {
                    continue;
                };
                if let Some(i) = pending.iter().position(|h| h.verify_time(&time).is_ok()) {
                    pending.remove(i);
                    ts_offset = time.gateway_ms as i64 - now_ms() as i64;
                    resend = Instant::now();
                }
            }
            (Some(msg_type::WELCOME), None) => {
                if let Some(s) = pending.iter_mut().find_map(|h| h.on_welcome(msg).ok()) {
                    let _ = sock.send_to(&s.confirm, gw);
                    session = Some(s);
                    resend = Instant::now() + RETRY;
                }
            }
            (Some(msg_type::ESTABLISHED), Some(s)) if s.verify_established(msg).is_ok() => {
                out.ms = Some(t0.elapsed().as_secs_f64() * 1e3);
                let close = Control {
                    session_id: s.session_id,
                    ctr: s.next_ctr,
                    body: Body::Close {
                        reason: Reason::Closed.code(),
                    },
                }
                .encode(&s.keys.mac_key())
                .map_err(|e| anyhow::anyhow!("CLOSE: {e}"))?;
                let _ = sock.send_to(&close, gw);
                return Ok(out);
            }
            _ => {}
        }
    }
}

/// The reattaching client: its session moves between its two sockets.
struct Mover {
    client: TestClient,
    /// The socket its binding is on.
    bound: usize,
    /// The last ACK's generation, so a late duplicate of an earlier ACK does not count.
    generation: u32,
    last_keepalive: Instant,
}

impl Mover {
    /// A KEEPALIVE from the binding, at most one a second (the answer is left for the
    /// next reattach to drain).
    fn keepalive(&mut self, gw: SocketAddr) {
        if self.last_keepalive.elapsed() < KEEPALIVE_EVERY {
            return;
        }
        let ka = self.client.control(Body::Keepalive {
            ts_ms: now_ms(),
            pad: 0,
        });
        let _ = self.client.socks[self.bound].send_to(&ka, gw);
        self.last_keepalive = Instant::now();
    }

    /// One move to the other socket: REQUEST → CHALLENGE → CONFIRM → ACK, each
    /// retransmitted (fresh) after [`RETRY`]. The round trip (µs) from the first REQUEST
    /// to the ACK, or `None` without an ACK within 2 s.
    fn reattach(&mut self, gw: SocketAddr) -> Result<Option<f64>> {
        let from = 1 - self.bound;
        let c = &mut self.client;
        let via = Via(from, gw);
        let sock = &c.socks[from];
        sock.set_nonblocking(true)?;
        let mut buf = [0u8; 2048];
        while sock.recv_from(&mut buf).is_ok() {}
        sock.set_nonblocking(false)?;
        sock.set_read_timeout(Some(Duration::from_millis(10)))?;
        let t0 = Instant::now();
        let mut challenge: Option<[u8; 16]> = None;
        let mut resend = t0;
        while t0.elapsed() < REATTACH_DEADLINE {
            if Instant::now() >= resend {
                let msg = match challenge {
                    None => c.reattach_request(now_ms(), TransportKind::Wifi),
                    Some(ch) => c.control(Body::ReattachConfirm { challenge: ch }),
                };
                c.send_raw(via, &msg);
                resend = Instant::now() + RETRY;
            }
            let Ok((len, _)) = c.socks[from].recv_from(&mut buf) else {
                continue;
            };
            let Some(body) = Unverified::decode(&buf[..len])
                .ok()
                .and_then(|u| u.verify(&c.mac).ok().map(|m| m.body.clone()))
            else {
                continue;
            };
            match body {
                Body::ReattachChallenge { challenge: ch }
                    if challenge.is_none() || challenge == Some(ch) =>
                {
                    challenge = Some(ch);
                    let msg = c.control(Body::ReattachConfirm { challenge: ch });
                    c.send_raw(via, &msg);
                    resend = Instant::now() + RETRY;
                }
                Body::ReattachAck { generation: g, .. } if g > self.generation => {
                    self.generation = g;
                    self.bound = from;
                    return Ok(Some(t0.elapsed().as_secs_f64() * 1e6));
                }
                Body::ReattachDenied { reason } => {
                    bail!("a legitimate reattach was denied (reason {reason})")
                }
                _ => {}
            }
        }
        Ok(None)
    }
}

/// A workload's figures, and what the gateway did meanwhile.
struct Window {
    handshake_ms: Vec<Option<f64>>,
    hellos: u64,
    cookies: u64,
    reattach_us: Vec<Option<f64>>,
    seconds: f64,
    controller_cpu: f64,
    machine_cpu: Option<f64>,
    event_log_bps: f64,
    xdp_drops: BTreeMap<String, u64>,
    handshakes: BTreeMap<String, u64>,
    security: BTreeMap<String, u64>,
    suppressed: BTreeMap<String, u64>,
    keepalive_answers: BTreeMap<String, u64>,
    sig_verifications: u64,
    bad_signature: u64,
    spurious: u64,
    keepalive_transitions: u64,
}

impl Window {
    fn handshakes_ok(&self) -> usize {
        self.handshake_ms.iter().flatten().count()
    }

    fn sorted(v: &[Option<f64>]) -> Vec<f64> {
        let mut s: Vec<f64> = v.iter().flatten().copied().collect();
        s.sort_by(f64::total_cmp);
        s
    }

    fn handshake_p(&self, q: f64) -> Option<f64> {
        let s = Self::sorted(&self.handshake_ms);
        (!s.is_empty()).then(|| percentile(&s, q))
    }

    fn reattach_p(&self, q: f64) -> Option<f64> {
        let s = Self::sorted(&self.reattach_us);
        (!s.is_empty()).then(|| percentile(&s, q))
    }

    /// The window's figures as the results keep them.
    fn record(&self) -> schema::Window {
        let r1 = |v: f64| (v * 10.0).round() / 10.0;
        let n = self.handshake_ms.len().max(1) as f64;
        let ok = self.reattach_us.iter().flatten().count();
        schema::Window {
            handshake_success: (self.handshakes_ok() as f64 / n * 1000.0).round() / 1000.0,
            handshakes: self.handshake_ms.len(),
            handshake_ms_p50: self.handshake_p(0.5).map(r1),
            handshake_ms_p99: self.handshake_p(0.99).map(r1),
            handshake_ms_max: self.handshake_p(1.0).map(r1),
            handshake_ms: self.handshake_ms.iter().map(|v| v.map(r1)).collect(),
            hellos_sent: self.hellos,
            cookies_received: self.cookies,
            reattach_success: (ok as f64 / self.reattach_us.len().max(1) as f64 * 1000.0).round()
                / 1000.0,
            reattach_rtt_us_p50: self.reattach_p(0.5).map(f64::round),
            reattach_rtt_us_p99: self.reattach_p(0.99).map(f64::round),
            reattach_rtt_us: self.reattach_us.iter().map(|v| v.map(f64::round)).collect(),
            window_seconds: r1(self.seconds),
            controller_cpu: (self.controller_cpu * 1000.0).round() / 1000.0,
            machine_cpu: self.machine_cpu.map(|c| (c * 100.0).round() / 100.0),
            event_log_bytes_per_s: self.event_log_bps.round(),
            xdp_drops: self.xdp_drops.clone(),
            controller_handshakes: self.handshakes.clone(),
            controller_security_events: self.security.clone(),
            events_suppressed: self.suppressed.clone(),
            keepalive_answers: self.keepalive_answers.clone(),
            controller_hello_sig_verifications: self.sig_verifications,
            controller_hello_bad_signature: self.bad_signature,
            keepalive_session_transitions: self.keepalive_transitions,
            spurious_volatile: self.spurious,
        }
    }
}

/// The gateway's counters that grew between two readings.
fn grew(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter_map(|(k, &a)| {
            let d = a.saturating_sub(before.get(k).copied().unwrap_or(0));
            (d > 0).then(|| (k.clone(), d))
        })
        .collect()
}

/// HELLO outcomes the controller counts only after checking the signature.
const AFTER_SIGNATURE: [&str; 7] = [
    "bad_signature",
    "freshness_expired",
    "before_start",
    "replay",
    "busy",
    "pool_exhausted",
    "welcomed",
];

/// Runs `f` and measures the gateway around it.
fn window(
    lab: &GwLab,
    pid: u32,
    keepers: &[u64],
    f: impl FnOnce() -> Result<Workload>,
) -> Result<Window> {
    let log = lab.dir.join("gateway-events.jsonl");
    let versions = |lab: &GwLab| -> Vec<u64> {
        keepers
            .iter()
            .map(|&id| lab.session(id).map_or(0, |s| s.version))
            .collect()
    };
    let stats0: Stats = lab.stats();
    let v0 = versions(lab);
    let log0 = file_len(&log);
    let (cpu0, m0) = (super::machine::cpu_secs(pid)?, machine_ticks());
    let (t0, wall0) = (Instant::now(), now_ms());
    let w = f()?;
    let seconds = t0.elapsed().as_secs_f64();
    let (cpu1, m1) = (super::machine::cpu_secs(pid)?, machine_ticks());
    let wall1 = now_ms();
    let log1 = file_len(&log);
    let stats1: Stats = lab.stats();
    let v1 = versions(lab);
    // A rotation renames the log to <file>.1: what it grew by is then in that file.
    let grown = if stats1.event_log_rotations > stats0.event_log_rotations || log1 < log0 {
        file_len(&log.with_extension("jsonl.1")).saturating_sub(log0) + log1
    } else {
        log1 - log0
    };
    let handshakes = grew(&stats1.handshakes, &stats0.handshakes);
    let count = |m: &BTreeMap<String, u64>, keys: &[&str]| -> u64 {
        keys.iter().filter_map(|k| m.get(*k)).sum()
    };
    let transitions: u64 = v1.iter().zip(&v0).map(|(a, b)| a.saturating_sub(*b)).sum();
    // State changes away from ATTACHED of the keepalive sessions in the window, from
    // the gateway's recent events; a change the event list no longer holds still
    // shows in the sessions' versions (a change away and one back: two).
    let away = lab
        .events()
        .iter()
        .filter(|e| match e {
            EventRecord::StateChange {
                ts_ms,
                session_id: SessionId(id),
                from,
                ..
            } => {
                *from == State::Attached
                    && keepers.contains(id)
                    && (wall0..=wall1 + 1000).contains(ts_ms)
            }
            _ => false,
        })
        .count() as u64;
    Ok(Window {
        handshake_ms: w.handshake_ms,
        hellos: w.hellos,
        cookies: w.cookies,
        reattach_us: w.reattach_us,
        seconds,
        controller_cpu: (cpu1 - cpu0) / seconds,
        machine_cpu: m0.zip(m1).map(|((b0, t0), (b1, t1))| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
            if t1 > t0 {
                (b1 - b0) as f64 / (t1 - t0) as f64 * cores
            } else {
                0.0
            }
        }),
        event_log_bps: grown as f64 / seconds,
        // The DROPS counters by reason: the gateway lists the answered ones (COOKIEs
        // sent) apart from the drops.
        xdp_drops: {
            let mut m = grew(&stats1.xdp_drops, &stats0.xdp_drops);
            m.extend(grew(&stats1.xdp_answered, &stats0.xdp_answered));
            m
        },
        sig_verifications: count(&handshakes, &AFTER_SIGNATURE),
        bad_signature: count(&handshakes, &["bad_signature"]),
        handshakes,
        security: grew(&stats1.security_by_kind, &stats0.security_by_kind),
        suppressed: grew(&stats1.events_suppressed, &stats0.events_suppressed),
        keepalive_answers: grew(&stats1.keepalives, &stats0.keepalives),
        spurious: away.max(transitions.div_ceil(2)),
        keepalive_transitions: transitions,
    })
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map_or(0, |m| m.len())
}

/// (busy, total) jiffies of the whole machine (/proc/stat).
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4)?;
    Some((total - idle, total))
}
