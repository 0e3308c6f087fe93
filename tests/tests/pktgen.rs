//! The traffic generator (`jvpn-ctl pktgen`): its program stamps session ids with
//! valid checksums (checked by etherparse), every frame it counts arrives at an XDP
//! sink on the peer veth for every session, a receiving kernel accepts the frames,
//! `--rate` and `--duration` hold, and Ctrl-C ends a run with an exact summary.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, UdpSocket},
    process::Stdio,
    time::{Duration, Instant},
};

use jvpn_common::wire::{Kind, WireHeader};
use jvpn_ctl::{
    bench::{
        frame::FrameSpec,
        pktgen::{DEFAULT_BATCH, Generator, Limit, Options},
        sink::{Sink, SinkMode},
    },
    datapath::{AttachMode, Datapath, DatapathConfig, PASS_PROGRAM},
    lab::netns::{Netns, PinDir},
};
use jvpn_tests::{
    frames::verify_checksums,
    pktgen_lab::{GEN_IF, PEER_IF, PEER_V4, PEER_V6, Pair, summary},
    require_root,
    testrun::{XDP_TX, run},
};

const PORT: u16 = jvpn_common::DEFAULT_PORT;
const FIRST: u64 = 0x5e55_0000_0000_0001;

fn sink(pair: &Pair, mode: SinkMode) -> Sink {
    pair.peer
        .run(|| Sink::attach(PEER_IF, PORT, mode, AttachMode::Native))
        .unwrap()
}

/// Runs the generator program on single frames (`BPF_PROG_TEST_RUN` without live
/// frames), each time on the frame the previous run left, as a recycled page would
/// hold it (once more with its outer headers overwritten, as a relay leaves a page):
/// the template's headers come back, ids cycle first..first+n-1 and every checksum
/// stays valid.
#[test]
fn the_program_stamps_session_ids_and_keeps_checksums_valid() {
    require_root!();
    for (src, dst, scrambled) in [
        ("10.0.0.1:40000", "10.0.0.2:51820", false),
        ("10.0.0.1:40000", "10.0.0.2:51820", true),
        ("[fd00::1]:40000", "[fd00::2]:51820", false),
    ] {
        let n = 5u64;
        let spec = FrameSpec {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            payload_len: 101,
            session_id: FIRST,
        };
        let g = Generator::new(Options {
            iface: "lo".into(),
            frame: spec.clone(),
            sessions: n,
            cpus: vec![jvpn_ctl::bench::cpus::allowed().unwrap()[0]],
            rate: None,
            limit: Limit::Count(1),
            batch: DEFAULT_BATCH,
            stamp_time: false,
            src_ports: None,
        })
        .unwrap();
        let template = g.frame().to_vec();
        let payload = verify_checksums(&template);
        assert_eq!(payload.len(), 101);
        let mut frame = template.clone();
        // On one CPU (the program's cycle is per CPU), 2n+1 runs.
        let cpu = jvpn_ctl::bench::cpus::allowed().unwrap()[0];
        let seen = std::thread::scope(|sc| {
            sc.spawn(|| {
                jvpn_ctl::bench::cpus::pin_current_thread(cpu).unwrap();
                let prog = g.program().unwrap();
                let mut seen = Vec::new();
                for _ in 0..2 * n + 1 {
                    if scrambled {
                        // A page as a relay left it: other outer headers entirely.
                        let off = frame.len() - payload.len();
                        frame[..off].fill(0x5a);
                    }
                    let r = run(prog, &frame, 1);
                    assert_eq!(r.action, XDP_TX, "{src}");
                    assert_eq!(r.out.len(), template.len());
                    let p = verify_checksums(&r.out);
                    let (h, kind) = WireHeader::parse(&p).unwrap();
                    assert_eq!(kind, Kind::Data);
                    seen.push(h.session_id() - FIRST);
                    // Only the session id (and the checksum) changed.
                    let off = r.out.len() - p.len();
                    assert_eq!(
                        (&p[..4], &p[12..]),
                        (&payload[..4], &payload[12..]),
                        "{src}"
                    );
                    // The template's headers, whatever the page held.
                    assert_eq!(&r.out[..off - 2], &template[..off - 2], "{src}");
                    frame = r.out;
                }
                seen
            })
            .join()
            .unwrap()
        });
        let want: Vec<u64> = (0..2 * n + 1).map(|i| i % n).collect();
        assert_eq!(seen, want, "{src}: session ids in order, wrapping at n");
        assert_eq!(g.counters().unwrap().sent, 2 * n + 1);
        assert_eq!(g.counters().unwrap().errors, 0);
    }
}

/// Exact counts end to end: the generator's own count, the veth's transmit counter,
/// and the sink on the peer agree, and every session gets its exact share.
#[test]
fn every_frame_arrives_for_every_session() {
    require_root!();
    for v6 in [false, true] {
        let pair = Pair::new("jpg");
        let s = sink(&pair, SinkMode::PerSession { capacity: 4096 });
        let (n, count) = (1000u64, 400_000u64);
        let first = format!("{FIRST:#x}");
        let out = pair.pktgen(
            v6,
            &[
                "--sessions",
                "1000",
                "--first-id",
                &first,
                "--count",
                "400000",
                "--cpus",
                &pair.cpu_list(),
                "--json",
            ],
        );
        let sum = summary(&out);
        eprintln!("v6 {v6}: {sum}");
        assert_eq!(sum["sent"], count, "{sum}");
        assert_eq!(sum["completed_runs_frames"], count);
        assert_eq!(sum["program_errors"], 0);
        assert_eq!(sum["interrupted"], false);
        assert_eq!(sum["veth_xmit"], count, "the veth took every frame");
        assert_eq!(sum["veth_xmit_errors"], 0);

        let st = settled(&s, count);
        assert_eq!(st.data, count, "valid DATA frames at the sink");
        assert_eq!(st.untracked, 0);
        // Anything else the sink saw is the kernel's own chatter (IPv6 ND, MLD).
        assert!(st.frames - st.data < 50, "{st:?}");
        let per = s.sessions().unwrap();
        let ids: Vec<u64> = per.keys().copied().collect();
        assert_eq!(ids, (FIRST..FIRST + n).collect::<Vec<_>>(), "session ids");
        // Each CPU cycles through the sessions on its own, and each CPU's share is a
        // multiple of n here: every session got exactly count/n frames.
        let share = count / n;
        assert!(
            per.values().all(|&c| c == share),
            "per-session counts {:?}..{:?}",
            per.values().min(),
            per.values().max()
        );
    }
}

/// The frames pass a receiving kernel's checks (IPv4 header checksum, UDP checksum
/// for IPv4 and IPv6, lengths) and reach a UDP socket as jvpn DATA; `--rate` paces.
#[test]
fn a_receiving_kernel_accepts_the_frames_at_the_asked_rate() {
    require_root!();
    for v6 in [false, true] {
        let pair = Pair::new("jpk");
        // Native XDP transmit into a veth needs an XDP program on the peer: xdp_pass
        // hands the frames to the peer's stack.
        let pins = PinDir::new("pk");
        let mut dp = pair
            .peer
            .run(|| {
                Datapath::load(DatapathConfig {
                    max_sessions: 16,
                    pin_dir: pins.0.clone(),
                    ..DatapathConfig::default()
                })
            })
            .unwrap();
        pair.peer
            .run(|| dp.attach_unpinned(PASS_PROGRAM, PEER_IF, AttachMode::Native))
            .unwrap();
        let bind: SocketAddr = if v6 {
            format!("[{PEER_V6}]:{PORT}")
        } else {
            format!("{PEER_V4}:{PORT}")
        }
        .parse()
        .unwrap();
        let sock = pair.peer.run(|| UdpSocket::bind(bind)).unwrap();
        // Room for every datagram: XDP-built skbs take a page each.
        let size: libc::c_int = 64 << 20;
        // SAFETY: setsockopt on our socket with an int option.
        let rc = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&sock),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&size as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_RCVBUFFORCE");
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let errors_before = csum_errors(&pair.peer, v6);
        let (n, count, rate) = (7u64, 2_800u64, 5_600u64);
        let rx = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = [0u8; 2048];
            while let Ok((len, from)) = sock.recv_from(&mut buf) {
                got.push((buf[..len].to_vec(), from));
            }
            got
        });
        let out = pair.pktgen(
            v6,
            &[
                "--sessions",
                "7",
                "--first-id",
                "100",
                "--payload",
                "200",
                "--count",
                "2800",
                "--rate",
                "5600",
                "--cpus",
                &pair.cpu_list(),
                "--json",
            ],
        );
        let sum = summary(&out);
        let got = rx.join().unwrap();
        eprintln!("v6 {v6}: {sum}; received {}", got.len());
        assert_eq!(sum["sent"], count);
        let secs = sum["seconds"].as_f64().unwrap();
        let want = count as f64 / rate as f64;
        assert!(
            secs > want * 0.8 && secs < want * 4.0 + 1.0,
            "{count} frames at {rate} pps took {secs} s"
        );
        assert_eq!(got.len() as u64, count, "datagrams delivered");
        let mut per = BTreeMap::new();
        for (p, from) in &got {
            assert_eq!(p.len(), 200);
            let (h, kind) = WireHeader::parse(p).expect("a jvpn packet");
            assert_eq!(kind, Kind::Data);
            assert_eq!(from.port(), 40_000);
            *per.entry(h.session_id()).or_insert(0u64) += 1;
        }
        assert_eq!(
            per.keys().copied().collect::<Vec<_>>(),
            (100..107).collect::<Vec<_>>()
        );
        assert!(per.values().all(|&c| c == count / n), "{per:?}");
        assert_eq!(
            csum_errors(&pair.peer, v6),
            errors_before,
            "checksum errors"
        );
    }
}

/// `--duration` ends the run on time, and Ctrl-C (SIGINT) ends a long one promptly
/// with a summary whose count the sink confirms.
#[test]
fn duration_and_ctrl_c_end_runs_with_exact_counts() {
    require_root!();
    let pair = Pair::new("jpd");
    let s = sink(&pair, SinkMode::Parse);
    let cpus = pair.cpu_list();

    let out = pair.pktgen(false, &["--duration", "0.5", "--cpus", &cpus, "--json"]);
    let sum = summary(&out);
    eprintln!("duration: {sum}");
    let secs = sum["seconds"].as_f64().unwrap();
    assert!((0.45..1.2).contains(&secs), "--duration 0.5 took {secs} s");
    let sent = sum["sent"].as_u64().unwrap();
    assert!(sent > 10_000, "{sum}");
    // At full rate the peer's receive ring can be full for a moment: the veth then
    // refuses frames, and counts them. Every frame is one or the other.
    let took = sum["veth_xmit"].as_u64().unwrap();
    let refused = sum["veth_xmit_errors"].as_u64().unwrap();
    assert_eq!(took + refused, sent, "taken + refused = generator count");
    assert!(refused < sent / 100, "{sum}");
    assert_eq!(
        settled(&s, took).data,
        took,
        "sink count = frames the veth took"
    );

    let mut child = pair
        .jvpn_ctl()
        .args([
            "pktgen",
            "--iface",
            GEN_IF,
            "--src",
            "10.201.0.1",
            "--dst",
            PEER_V4,
        ])
        .args([
            "--dst-mac",
            &pair.peer_mac(),
            "--duration",
            "60",
            "--cpus",
            &cpus,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let t = Instant::now();
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "pktgen ignored Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("after Ctrl-C ({:?}): {stdout}", t.elapsed());
    assert!(
        status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with("sent "))
        .expect("a summary line");
    assert!(line.ends_with(", interrupted"), "{line}");
    let sent2: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(sent2 > 10_000, "{line}");
    // "<iface>: X frames accepted into the peer's receive rings, Y refused"
    let ring = stdout
        .lines()
        .find(|l| l.contains("accepted into the peer's receive rings"))
        .expect("the veth's counts");
    let words: Vec<&str> = ring.split_whitespace().collect();
    let took2: u64 = words[1].parse().unwrap();
    let refused2: u64 = words[words.len() - 2].parse().unwrap();
    assert_eq!(took2 + refused2, sent2, "{ring}");
    assert_eq!(
        settled(&s, took + took2).data,
        took + took2,
        "sink count after Ctrl-C"
    );
}

/// The sink's counters once it has seen `data` DATA frames, or after a second (the
/// peer's NAPI may still be draining its rings when the generator returns).
fn settled(s: &Sink, data: u64) -> jvpn_common::bench::SinkStats {
    let t = Instant::now();
    loop {
        let st = s.stats().unwrap();
        if st.data >= data || t.elapsed() > Duration::from_secs(1) {
            return st;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `Udp: InCsumErrors` (or `Udp6InCsumErrors`) of a namespace.
fn csum_errors(ns: &Netns, v6: bool) -> u64 {
    if v6 {
        let out = ns.exec("cat", &["/proc/net/snmp6"]).unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        return text
            .lines()
            .find_map(|l| l.strip_prefix("Udp6InCsumErrors"))
            .map(|v| v.trim().parse().unwrap())
            .expect("Udp6InCsumErrors");
    }
    let out = ns.exec("cat", &["/proc/net/snmp"]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
    let i = names
        .split_whitespace()
        .position(|x| x == "InCsumErrors")
        .unwrap();
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}
