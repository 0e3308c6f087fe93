//! `jvpn-ctl demo`: the data plane on its own, end to end, in one command.
//!
//! Builds client / gateway / exit namespaces (DESIGN §8), attaches the XDP relay in
//! native mode, installs one session, and runs traffic both ways while the client's
//! binding moves Wi-Fi → LTE → Wi-Fi. The binding swaps go straight through the
//! datapath API here; the authenticated reattach that drives them in production is the
//! controller's job. Everything is torn down at the end, on error, and on Ctrl-C.

use std::{
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use jvpn_common::{
    counters,
    wire::{WireHeader, msg_type},
};
use jvpn_ctl::lab::{
    gateway::{
        GW_DEVS, GatewayLab, Transport,
        Transport::{Lte, Wifi},
        exit_addr, gw_exit_addr, session_entry,
    },
    netns::Netns,
};

#[derive(clap::Args)]
pub struct Args {
    /// Seconds spent on each leg of the scenario.
    #[arg(long, default_value_t = 1.5)]
    leg_secs: f64,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn random_session_id() -> anyhow::Result<u64> {
    let mut b = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .context("reading /dev/urandom")?;
    Ok(u64::from_ne_bytes(b) | 1)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.leg_secs > 0.0 && args.leg_secs <= 60.0,
        "--leg-secs must be in (0, 60]"
    );
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };
    let start = Instant::now();
    let say = |msg: String| println!("[{:>7.3}s] {msg}", start.elapsed().as_secs_f64());

    let lab =
        GatewayLab::build("jv").context("building the lab (needs root, iproute2, ethtool)")?;
    say(format!(
        "lab up: namespaces {}, {}, {}",
        lab.client.name, lab.gw.name, lab.exit.name
    ));
    let (mut dp, modes) = lab.relay(1024)?;
    for (dev, mode) in GW_DEVS.iter().zip(modes) {
        say(format!("gateway: XDP relay attached to {dev} ({mode})"));
    }
    let sid = random_session_id()?;
    dp.insert_session(sid, &session_entry(Wifi, 1))?;
    say(format!(
        "session {sid:#018x} installed: binding wifi {}, exit {}",
        Wifi.client_addr(),
        exit_addr()
    ));

    let bind = |ns: &Netns, a: SocketAddr| -> anyhow::Result<UdpSocket> {
        let s = ns.run(|| UdpSocket::bind(a))?;
        s.set_read_timeout(Some(Duration::from_millis(100)))?;
        Ok(s)
    };
    const TRANSPORTS: [Transport; 2] = [Wifi, Lte];
    let socks = [
        bind(&lab.client, Wifi.client_addr())?,
        bind(&lab.client, Lte.client_addr())?,
    ];
    let gws = TRANSPORTS.map(Transport::gw_addr);
    let exit = bind(&lab.exit, exit_addr())?;
    let gw_exit = gw_exit_addr();

    let stop = Arc::new(AtomicBool::new(false));
    let active = Arc::new(AtomicUsize::new(0)); // which transport the client sends on
    let bound = Arc::new(AtomicUsize::new(0)); // which one the gateway has bound
    let sent_up = Arc::new(AtomicU64::new(0));
    let echoed = Arc::new(AtomicU64::new(0));
    let misrouted = Arc::new(AtomicU64::new(0));
    // Per transport: (last packet received, first packet since the last reset).
    type Rx = [(Option<Instant>, Option<Instant>); 2];
    let rx_times: Arc<Mutex<Rx>> = Arc::new(Mutex::new([(None, None); 2]));
    let mut threads = Vec::new();
    {
        // Exit: echoes every DATA packet back through the gateway (downlink).
        let (exit, stop, echoed) = (exit.try_clone()?, stop.clone(), echoed.clone());
        threads.push(thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::SeqCst) {
                if let Ok((n, _)) = exit.recv_from(&mut buf)
                    && exit.send_to(&buf[..n], gw_exit).is_ok()
                {
                    echoed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for (i, s) in socks.iter().enumerate() {
        // Client receivers: count deliveries to a transport that is not bound.
        let (s, stop, bound, misrouted, rx_times) = (
            s.try_clone()?,
            stop.clone(),
            bound.clone(),
            misrouted.clone(),
            rx_times.clone(),
        );
        threads.push(thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::SeqCst) {
                if let Ok((n, _)) = s.recv_from(&mut buf)
                    && WireHeader::parse(&buf[..n]).is_ok()
                {
                    if bound.load(Ordering::SeqCst) != i {
                        misrouted.fetch_add(1, Ordering::Relaxed);
                    }
                    let now = Some(Instant::now());
                    let mut t = rx_times.lock().expect("poisoned");
                    t[i].0 = now;
                    t[i].1 = t[i].1.or(now);
                }
            }
        }));
    }
    {
        // Client sender: ~2,000 packets/s on the active transport.
        let socks = [socks[0].try_clone()?, socks[1].try_clone()?];
        let (stop, active, sent_up) = (stop.clone(), active.clone(), sent_up.clone());
        threads.push(thread::spawn(move || {
            let mut seq = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let i = active.load(Ordering::SeqCst);
                let pkt = jvpn_common::wire::WireHeader::new(msg_type::DATA, sid, seq).to_bytes();
                let mut p = pkt.to_vec();
                p.extend_from_slice(&[0u8; 100]);
                if socks[i].send_to(&p, gws[i]).is_ok() {
                    sent_up.fetch_add(1, Ordering::Relaxed);
                }
                seq += 1;
                thread::sleep(Duration::from_micros(500));
            }
        }));
    }

    let leg = Duration::from_secs_f64(args.leg_secs);
    let wait = |d: Duration| {
        let until = Instant::now() + d;
        while Instant::now() < until && !INTERRUPTED.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(20));
        }
        !INTERRUPTED.load(Ordering::SeqCst)
    };
    let names = ["wifi", "lte"];
    let mut switches = Vec::new();
    let mut ok = wait(leg);
    for (step, to) in [1usize, 0].into_iter().enumerate() {
        if !ok {
            break;
        }
        let from = 1 - to;
        if step == 0 {
            lab.client.ip(&["link", "set", "c-wifi", "down"])?;
            say("client: wifi link down".into());
        }
        rx_times.lock().expect("poisoned")[to].1 = None;
        active.store(to, Ordering::SeqCst);
        let t = Instant::now();
        let generation =
            dp.replace_session(sid, &session_entry(TRANSPORTS[to], step as u32 + 2))?;
        let swap = t.elapsed();
        bound.store(to, Ordering::SeqCst);
        let last_old = rx_times.lock().expect("poisoned")[from].0;
        say(format!(
            "gateway: binding {} -> {} (generation {generation}), map swap {} µs",
            names[from],
            names[to],
            swap.as_micros()
        ));
        ok = wait(Duration::from_millis(200));
        let first_new = rx_times.lock().expect("poisoned")[to].1;
        if let (Some(a), Some(b)) = (last_old, first_new) {
            switches.push((names[from], names[to], swap, b.saturating_duration_since(a)));
        }
        if step == 0 && ok && wait(leg) {
            lab.client.ip(&["link", "set", "c-wifi", "up"])?;
            say("client: wifi link back up".into());
            // A stray sender on the old transport: must be dropped, never relayed.
            let before = dp.drops()?[counters::STALE_BINDING as usize];
            for n in 0..50u64 {
                let mut p = WireHeader::new(msg_type::DATA, sid, 1 << 40 | n)
                    .to_bytes()
                    .to_vec();
                p.extend_from_slice(&[0u8; 32]);
                let _ = socks[0].send_to(&p, gws[0]);
            }
            thread::sleep(Duration::from_millis(100));
            let stale = dp.drops()?[counters::STALE_BINDING as usize] - before;
            say(format!(
                "client: 50 packets sent on wifi while lte is bound: {stale} dropped by XDP as stale_binding"
            ));
            ok = wait(leg / 2);
        }
    }
    if ok {
        ok = wait(leg);
    }
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        let _ = t.join();
    }
    if !ok {
        say("interrupted: tearing the lab down".into());
        return Ok(());
    }

    let stats = dp.session_stats(sid)?.unwrap_or_default();
    let drops = dp.drops()?;
    println!("\nsummary");
    println!(
        "  session id            {sid:#018x} (unchanged across {} switches)",
        switches.len()
    );
    for (from, to, swap, gap) in &switches {
        println!(
            "  switch {from:>4} -> {to:<4}   map swap {:>5} µs, downlink gap {:>6.1} ms (client sends every 0.5 ms)",
            swap.as_micros(),
            gap.as_secs_f64() * 1e3
        );
    }
    println!(
        "  relayed by XDP        {} up, {} down ({} sent by the client, {} echoed by the exit)",
        stats.up_packets,
        stats.down_packets,
        sent_up.load(Ordering::Relaxed),
        echoed.load(Ordering::Relaxed)
    );
    println!("  stale-binding drops   {}", stats.stale_drops);
    println!(
        "  delivered to a non-bound transport: {}",
        misrouted.load(Ordering::Relaxed)
    );
    let other: u64 = drops.iter().sum::<u64>() - drops[counters::STALE_BINDING as usize];
    println!("  other drops           {other}");
    drop(dp);
    drop(lab);
    println!("lab torn down");
    Ok(())
}
