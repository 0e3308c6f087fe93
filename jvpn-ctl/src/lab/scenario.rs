//! The scenario behind `cargo xtask run`: a VPN session surviving the loss of its
//! transport, shown in the lab with every real part (XDP relay, controller, exit,
//! client agent, TUN devices) and steady tunnel traffic: a UDP echo stream that
//! measures each interruption, and a bulk TCP flow that has to follow the tunnel MTU
//! across every switch.
//!
//! Wi-Fi sits behind a NAT, whose mapping moves (a NAT reboot: new UDP port, state
//! flushed) → the client rebinds over Wi-Fi, same session →
//! Wi-Fi's link goes down → the kernel says so and the client reattaches over LTE
//! at once (a 1400-byte link: the tunnel MTU follows) → Wi-Fi returns → the client
//! moves back → LTE loses IPv4 and Wi-Fi becomes a black hole (its link still up,
//! every packet dropped: only silence tells) → reattach over LTE's IPv6
//! (cross-family) after the loss TTL → Wi-Fi recovers → back to Wi-Fi (IPv6 → IPv4).
//! The summary's detection and cause columns show the two kinds of death apart. While Wi-Fi is up but not bound,
//! frames it carried earlier are replayed on it: the relay must deliver none.

use std::{
    io::{Error, Result},
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use super::{
    capture::{self, Capture},
    gateway::{
        LabOptions,
        Transport::{self, Lte, Lte6, Wifi},
    },
    stack::{EXIT_TUN, EXIT_TUN6, Stack},
    traffic::{self, EchoServer, Stream, StreamReport, TcpFlow, TcpReport},
};
use crate::{
    client::{ClientStatus, SwitchRecord},
    control::api::{EventRecord, SessionInfo, unix_ms},
    datapath::Pinned,
};

/// Lab timers: fast enough to watch, slow enough to read (the production defaults
/// are 1 s keepalives and a 3 s loss TTL).
pub const POLICY: &str = "keepalive_interval_ms = 100\ntransport_loss_ttl_ms = 500\nidle_loss_ttl_ms = 500\n\
candidate_ttl_ms = 1000\nmax_recovery_window_ms = 15000\nmax_switches_per_minute = 10\n";
const HEALTH: &str =
    "[health]\nreturn_after_ms = 1000\nattempt_timeout_ms = 400\nidle_after_ms = 0\n";
const ECHO_PORT: u16 = 7000;
/// The bulk TCP flow's sink, on the exit's tunnel address.
const TCP_PORT: u16 = 7001;
/// The bulk TCP flow's rate cap (bit/s). Unpaced, it fills the tunnel up to what its
/// slowest part carries (in a debug build the exit, whose socket then drops tunnel
/// packets when its receive buffer overflows, at ~250–300 Mbit/s): the echo
/// stream's loss then also counted congestion drops (10 % instead of the 7.6 % the
/// switches' outages cost) and planned switches showed 10–20 ms of queueing jitter
/// as an interruption. Below that the figures are the switches' own again, and TCP
/// still crosses every switch with a full window in flight.
const TCP_CAP: u64 = 200_000_000;
/// One stream packet every 2 ms: the interruption is measured to ±2 ms.
const STREAM_EVERY: Duration = Duration::from_millis(2);
const REPLAYED: usize = 20;

/// Everything the summary shows.
#[derive(Debug)]
pub struct Summary {
    pub session_id: Option<String>,
    pub session_unchanged: bool,
    pub switches: Vec<Switch>,
    pub stream: StreamReport,
    /// The same stream over IPv6 inside the tunnel (the lab's tunnel is dual-stack),
    /// beside the IPv4 one.
    pub stream6: StreamReport,
    pub tcp: TcpReport,
    /// The TCP flow's mean goodput while bound to each transport (Mbit/s), in the
    /// order the transports were first bound.
    pub tcp_by_transport: Vec<(String, f64)>,
    pub exit_duplicates: u64,
    pub replayed: usize,
    pub replayed_delivered: usize,
    pub stale_drops: u64,
    pub wall: Duration,
}

#[derive(Debug)]
pub struct Switch {
    pub record: SwitchRecord,
    /// The longest gap in the echo stream around the switch (ms).
    pub interruption_ms: f64,
    /// The client's tunnel (TUN) MTU once the switch completed.
    pub tunnel_mtu: u16,
    /// The longest time the TCP flow received nothing around the switch (ms).
    pub tcp_stall_ms: f64,
}

/// Prints one timeline line: seconds since `t0` (Unix ms), who, what.
pub(super) fn line(t0: u64, at_ms: u64, who: &str, what: &str) {
    let t = at_ms.saturating_sub(t0) as f64 / 1000.0;
    println!("{t:8.3}s  {who:<8} {what}");
}

fn describe(e: &EventRecord) -> Option<String> {
    Some(match e {
        EventRecord::StateChange {
            from,
            to,
            reason,
            detail,
            ..
        } => format!(
            "{} → {}  {}{}",
            from.name(),
            to.name(),
            serde_json::to_value(reason).ok()?.as_str()?,
            detail
                .and_then(|d| serde_json::to_value(d).ok())
                .and_then(|d| d.as_str().map(|s| format!(" ({s})")))
                .unwrap_or_default()
        ),
        EventRecord::TransportSwitch {
            old,
            new,
            generation,
            ..
        } => format!(
            "binding {} → {new} (generation {generation})",
            old.as_deref().unwrap_or("none")
        ),
        EventRecord::TransportSwitchDenied {
            candidate, detail, ..
        } => format!(
            "switch to {candidate} DENIED ({})",
            serde_json::to_value(detail).ok()?.as_str()?
        ),
        EventRecord::SecurityEvent { source, kind, .. } => {
            format!("SECURITY {kind} from {source}")
        }
        EventRecord::SecuritySummary {
            kind,
            prefix,
            count,
            interval_ms,
            ..
        } => format!("SECURITY {kind} from {prefix}: {count} in {interval_ms} ms"),
        EventRecord::EventsSuppressed { count, .. } => {
            format!("{count} events left out of the event log")
        }
        EventRecord::OwnershipChange {
            from_node,
            to_node,
            epoch,
            ..
        } => format!(
            "ownership: {} -> node {to_node}, epoch {epoch}",
            from_node.map_or("no owner".to_string(), |f| format!("node {f}"))
        ),
        EventRecord::TransportHealth {
            transport,
            health,
            cause,
            ..
        } => format!("{transport} {health} ({cause})"),
        EventRecord::ControllerStarted {
            resumed,
            reinstalled,
            removed,
            expired,
            ..
        } => format!(
            "controller started: {resumed} sessions resumed ({reinstalled} map entries \
             restored), {removed} unexplained entries removed, {expired} expired"
        ),
    })
}

/// Prints `socket`'s events as they happen, until the socket goes away.
pub(super) fn follow(socket: &Path, who: &'static str, t0: u64) {
    let socket = socket.to_path_buf();
    std::thread::spawn(move || {
        if let Ok(c) = crate::control::Client::connect(&socket) {
            let _ = c.follow(|e| {
                if let Some(d) = describe(&e) {
                    line(t0, e.ts_ms(), who, &d);
                }
                true
            });
        }
    });
}

struct Run<'a> {
    stack: Stack,
    t0: u64,
    stop: &'a AtomicBool,
}

impl Run<'_> {
    fn say(&self, what: &str) {
        line(self.t0, unix_ms(), "lab", what);
    }

    fn sleep(&self, d: Duration) -> Result<()> {
        let end = Instant::now() + d;
        while Instant::now() < end {
            if self.stop.load(Ordering::Relaxed) {
                return Err(Error::other("interrupted"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    fn status(&self) -> Result<ClientStatus> {
        self.stack.client()?.client_status().map_err(Error::other)
    }

    fn wait_bound(&self, t: Transport, within: Duration) -> Result<ClientStatus> {
        let end = Instant::now() + within;
        loop {
            let s = self.status()?;
            if s.bound.as_deref() == Some(t.name()) && s.reattach.is_none() {
                return Ok(s);
            }
            if Instant::now() > end {
                return Err(Error::other(format!(
                    "the session did not move to {} within {within:?} (client: {:?}, bound {:?})",
                    t.name(),
                    s.state,
                    s.bound
                )));
            }
            self.sleep(Duration::from_millis(10))?;
        }
    }

    /// Waits until the session is bound to `t` at generation `at_least` or later (a
    /// rebinding keeps the transport and moves the generation on).
    fn wait_generation(
        &self,
        t: Transport,
        at_least: u32,
        within: Duration,
    ) -> Result<ClientStatus> {
        let end = Instant::now() + within;
        loop {
            let s = self.status()?;
            if s.bound.as_deref() == Some(t.name()) && s.generation >= at_least {
                return Ok(s);
            }
            if Instant::now() > end {
                return Err(Error::other(format!(
                    "the session did not rebind over {} within {within:?} (client: {:?}, \
                     generation {})",
                    t.name(),
                    s.state,
                    s.generation
                )));
            }
            self.sleep(Duration::from_millis(10))?;
        }
    }

    fn link(&self, t: Transport, up: bool) -> Result<()> {
        let dev = t.client_dev();
        self.stack
            .lab
            .client
            .ip(&["link", "set", dev, if up { "up" } else { "down" }])?;
        // A link going down takes its routes with it; behind the NAT the gateway is
        // reached through the router, so that route comes back with the link (what
        // DHCP does on a real network).
        if up && t == Wifi && self.stack.lab.nat_binding().is_some() {
            let via = super::gateway::NAT_INSIDE.to_string();
            self.stack.lab.client.ip(&[
                "route",
                "replace",
                "10.77.1.0/24",
                "via",
                &via,
                "dev",
                dev,
            ])?;
        }
        Ok(())
    }

    /// Drops everything between the client's Wi-Fi and the gateway, both ways, with
    /// the link up; `false` lifts it.
    fn black_hole(&self, on: bool) -> Result<()> {
        self.stack.lab.lossy(Wifi, if on { 100 } else { 0 })
    }

    fn lte_ipv4(&self, present: bool) -> Result<()> {
        let verb = if present { "add" } else { "del" };
        self.stack
            .lab
            .client
            .ip(&["addr", verb, "10.77.2.2/24", "dev", "c-lte"])?;
        Ok(())
    }

    fn stale_drops(&self) -> u64 {
        Pinned::open(&self.stack.lab.pins.0)
            .and_then(|p| p.drops())
            .map(|d| d[jvpn_common::counters::STALE_BINDING as usize])
            .unwrap_or(0)
    }
}

/// Builds the lab, runs the scenario, prints the timeline; the lab is torn down when
/// this returns (also on error or interruption), unless `keep`.
pub fn run(bin: &Path, keep: bool, stop: &AtomicBool) -> Result<Option<Summary>> {
    let started = Instant::now();
    let t0 = unix_ms();
    println!("{:>9}  {:<8} what", "time", "who");
    line(
        t0,
        t0,
        "lab",
        "building namespaces and veths, attaching XDP, starting exit and gateway",
    );
    let mut stack = Stack::start_with(
        "jvl",
        Path::new("/run/jvpn-lab"),
        bin,
        POLICY,
        LabOptions { nat: true },
    )?;
    follow(&stack.socket, "gateway", t0);
    let echo = EchoServer::start(
        &stack.lab.exit,
        (
            EXIT_TUN.parse::<std::net::IpAddr>().map_err(Error::other)?,
            ECHO_PORT,
        )
            .into(),
    )?;
    let echo6 = EchoServer::start(
        &stack.lab.exit,
        (
            EXIT_TUN6
                .parse::<std::net::IpAddr>()
                .map_err(Error::other)?,
            ECHO_PORT,
        )
            .into(),
    )?;
    let cfg = stack.client_config(&[Wifi, Lte, Lte6], HEALTH);
    line(
        t0,
        unix_ms(),
        "lab",
        "starting the client agent (wifi, then lte, then lte6)",
    );
    stack.start_client(&cfg)?;
    follow(&stack.client_socket, "client", t0);
    let run = Run { stack, t0, stop };
    let end = Instant::now() + Duration::from_secs(10);
    let first = loop {
        let s = run.status()?;
        if s.session_id.is_some() && s.bound.is_some() {
            break s;
        }
        if Instant::now() > end {
            return Err(Error::other("no session within 10 s; see the client log"));
        }
        run.sleep(Duration::from_millis(20))?;
    };
    if keep {
        print_keep(&run.stack, &first);
        let Run { stack, .. } = run;
        drop((echo, echo6));
        let state = stack.detach()?;
        println!("(lab state: {})", state.display());
        return Ok(None);
    }
    let wifi_cap = Capture::start(&run.stack.lab.client, "c-wifi")?;
    let exit_cap = Capture::start(&run.stack.lab.exit, "x-gw")?;
    let stream_t0 = unix_ms();
    let stream = Stream::start(
        &run.stack.lab.client,
        (
            EXIT_TUN.parse::<std::net::IpAddr>().map_err(Error::other)?,
            ECHO_PORT,
        )
            .into(),
        STREAM_EVERY,
    )?;
    let stream6 = Stream::start(
        &run.stack.lab.client,
        (
            EXIT_TUN6
                .parse::<std::net::IpAddr>()
                .map_err(Error::other)?,
            ECHO_PORT,
        )
            .into(),
        STREAM_EVERY,
    )?;
    run.say(&format!(
        "tunnel traffic: a UDP packet every {} ms to {EXIT_TUN}:{ECHO_PORT} and one to \
         [{EXIT_TUN6}]:{ECHO_PORT}, echoed back",
        STREAM_EVERY.as_millis()
    ));
    let tcp = TcpFlow::start(
        &run.stack.lab.client,
        &run.stack.lab.exit,
        (
            EXIT_TUN.parse::<std::net::IpAddr>().map_err(Error::other)?,
            TCP_PORT,
        )
            .into(),
        Some(TCP_CAP),
    )?;
    run.say(&format!(
        "tunnel traffic: a bulk TCP flow to {EXIT_TUN}:{TCP_PORT}, capped at {} Mbit/s",
        TCP_CAP / 1_000_000
    ));
    let mut records = Vec::new();
    let mut replayed = 0;
    let mut replayed_delivered = 0;
    let drops_before = run.stale_drops();

    run.sleep(Duration::from_secs(2))?;
    let generation = run.status()?.generation;
    let mapped = run.stack.lab.rebind()?;
    run.say(&format!(
        "↻ the Wi-Fi NAT moves its mapping (new port, conntrack flushed): the gateway now \
         sees the client from {mapped}"
    ));
    records.push(run.wait_generation(Wifi, generation + 1, Duration::from_secs(8))?);

    run.sleep(Duration::from_millis(1500))?;
    run.say("✂ Wi-Fi link goes down (ip link set c-wifi down): the kernel tells the agent");
    run.link(Wifi, false)?;
    records.push(run.wait_bound(Lte, Duration::from_secs(8))?);

    run.sleep(Duration::from_millis(1500))?;
    run.say("Wi-Fi link is back (ip link set c-wifi up)");
    run.link(Wifi, true)?;
    let (n, d) = replay_wifi(&run, &wifi_cap, &exit_cap)?;
    (replayed, replayed_delivered) = (replayed + n, replayed_delivered + d);
    records.push(run.wait_bound(Wifi, Duration::from_secs(8))?);

    run.sleep(Duration::from_millis(1500))?;
    run.say("LTE loses IPv4 (IPv6-only from now on: ip addr del 10.77.2.2/24 dev c-lte)");
    run.lte_ipv4(false)?;
    run.sleep(Duration::from_millis(1000))?;
    run.say(
        "✂ Wi-Fi becomes a black hole (link up, every packet dropped by nftables): only \
         the loss TTL can tell",
    );
    run.black_hole(true)?;
    records.push(run.wait_bound(Lte6, Duration::from_secs(8))?);

    run.sleep(Duration::from_millis(1500))?;
    run.say("Wi-Fi gets through again, LTE has IPv4 again");
    run.black_hole(false)?;
    run.lte_ipv4(true)?;
    let (n, d) = replay_wifi(&run, &wifi_cap, &exit_cap)?;
    (replayed, replayed_delivered) = (replayed + n, replayed_delivered + d);
    records.push(run.wait_bound(Wifi, Duration::from_secs(8))?);

    run.sleep(Duration::from_millis(1500))?;
    let tcp_report = tcp.finish();
    let report = stream.finish(Duration::from_millis(300));
    let report6 = stream6.finish(Duration::from_millis(300));
    run.say("stopping traffic; tearing down");
    let last = run.status()?;
    let gw: Vec<SessionInfo> = run.stack.gateway()?.sessions().map_err(Error::other)?;
    let switches = records
        .into_iter()
        .filter_map(|s| {
            Some(Switch {
                interruption_ms: 0.0,
                tunnel_mtu: s.tunnel_mtu,
                tcp_stall_ms: 0.0,
                record: s.last_switch?,
            })
        })
        .collect();
    let mut summary = Summary {
        session_id: first.session_id.map(|i| i.to_string()),
        session_unchanged: last.session_id == first.session_id
            && last.sessions_established == 1
            && gw.len() == 1
            && Some(gw[0].id) == first.session_id,
        switches,
        exit_duplicates: echo.counts().1,
        stream: report,
        stream6: report6,
        tcp: tcp_report,
        tcp_by_transport: Vec::new(),
        replayed,
        replayed_delivered,
        stale_drops: run.stale_drops().saturating_sub(drops_before),
        wall: started.elapsed(),
    };
    attribute_gaps(
        &mut summary,
        &run,
        stream_t0,
        first.bound.as_deref().unwrap_or("-"),
    )?;
    Ok(Some(summary))
}

/// Matches each switch with the stream's outage and the TCP flow's stall around it,
/// from the gateway's TRANSPORT_SWITCH times, and splits the TCP flow's goodput by
/// the transport bound at the time (`first` before the first switch).
fn attribute_gaps(s: &mut Summary, run: &Run, stream_t0: u64, first: &str) -> Result<()> {
    let events = run.stack.gateway()?.events().map_err(Error::other)?;
    let times: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            EventRecord::TransportSwitch {
                ts_ms,
                old: Some(_),
                ..
            } => Some(*ts_ms),
            _ => None,
        })
        .collect();
    let tcp_t0 = s.tcp.started_unix_ms;
    // (from, transport) on the TCP flow's axis, in ms.
    let mut phases = vec![(0u64, first.to_owned())];
    for (sw, at) in s.switches.iter_mut().zip(times) {
        let t = at.saturating_sub(stream_t0) as f64;
        sw.interruption_ms = s
            .stream
            .gaps
            .iter()
            .filter(|(start, len)| *start <= t + 20.0 && start + len >= t - 20.0)
            .map(|(_, len)| *len)
            .fold(0.0, f64::max);
        // A stall may end well after the switch (a retransmission timeout).
        let t = at.saturating_sub(tcp_t0) as f64;
        sw.tcp_stall_ms = s
            .tcp
            .stalls
            .iter()
            .filter(|(start, len)| *start <= t + 1000.0 && start + len >= t - 20.0)
            .map(|(_, len)| *len)
            .fold(0.0, f64::max);
        phases.push((at.saturating_sub(tcp_t0), sw.record.to.clone()));
    }
    let end = s.tcp.duration.as_millis() as u64;
    // (transport, bytes, ms); a window belongs to the phase it starts in.
    let mut by: Vec<(String, u64, u64)> = Vec::new();
    for (i, (from, name)) in phases.iter().enumerate() {
        let to = phases.get(i + 1).map_or(end, |p| p.0);
        let (bytes, ms) = s.tcp.received_between(*from, to);
        match by.iter_mut().find(|b| b.0 == *name) {
            Some(b) => (b.1, b.2) = (b.1 + bytes, b.2 + ms),
            None => by.push((name.clone(), bytes, ms)),
        }
    }
    s.tcp_by_transport = by
        .into_iter()
        .map(|(n, bytes, ms)| (n, traffic::mbit_s(bytes, ms)))
        .collect();
    Ok(())
}

/// Replays DATA frames that Wi-Fi carried while it was bound, now that it is not:
/// returns (replayed, delivered to the exit's link).
fn replay_wifi(run: &Run, wifi: &Capture, exit: &Capture) -> Result<(usize, usize)> {
    let old: Vec<Vec<u8>> = wifi
        .frames()
        .into_iter()
        .filter(|f| f.outgoing && f.is_data())
        .take(REPLAYED)
        .map(|f| f.bytes)
        .collect();
    if old.is_empty() {
        return Ok((0, 0));
    }
    let s = run.status()?;
    if s.bound.as_deref() == Some("wifi") {
        return Ok((0, 0));
    }
    let since = Instant::now();
    capture::inject(
        &run.stack.lab.client,
        "c-wifi",
        &old,
        Duration::from_millis(1),
    )?;
    std::thread::sleep(Duration::from_millis(20));
    let delivered = capture::delivered(&old, &exit.frames(), since);
    run.say(&format!(
        "replayed {} earlier Wi-Fi DATA frames on the unbound Wi-Fi link: {delivered} delivered",
        old.len()
    ));
    Ok((old.len(), delivered))
}

fn print_keep(stack: &Stack, s: &ClientStatus) {
    let bin = std::env::current_exe().unwrap_or_else(|_| "jvpn-ctl".into());
    let b = bin.display();
    let gw = stack.socket.display();
    let cl = stack.client_socket.display();
    println!(
        "\nThe lab is up and stays up. Session {} is bound to {}.\n\n\
         Look around:\n  {b} sessions --socket {gw}\n  {b} events --follow --socket {gw}\n  \
         {b} stats --socket {gw}\n  {b} client status --socket {cl}\n\n\
         Take Wi-Fi down and watch the session move (then bring it back):\n  \
         ip -n {c} link set c-wifi down\n  ip -n {c} link set c-wifi up\n  \
         {b} client move lte6 --socket {cl}\n\n\
         Traffic through the tunnel goes to the exit's tunnel addresses {EXIT_TUN} and \
         {EXIT_TUN6} (the tunnel is dual-stack), e.g.:\n  \
         ip netns exec {c} ping -c3 {EXIT_TUN}   # if ping is installed\n  \
         ip netns exec {c} ping -6 -c3 {EXIT_TUN6}\n\n\
         Logs and configuration: {d}\nRemove it all: cargo xtask lab down   (or: {b} lab down)",
        s.session_id.map(|i| i.to_string()).unwrap_or_default(),
        s.bound.clone().unwrap_or_default(),
        c = stack.lab.client.name,
        d = stack.dir.display(),
    );
}

/// A summary's first line: the session, and whether it stayed the same.
pub(super) fn session_line(id: Option<&str>, unchanged: bool, kept: &str, changed: &str) -> String {
    format!(
        "  session       {} — {}\n",
        id.unwrap_or("-"),
        if unchanged { kept } else { changed }
    )
}

/// A summary's line on the echo stream: sent, echoed, lost (`note` after the
/// percentage) and `duplicates`.
pub(super) fn tunnel_line(st: &StreamReport, duplicates: u64, note: &str) -> String {
    let lost = st.sent.saturating_sub(st.echoed);
    let pct = if st.sent > 0 {
        lost as f64 * 100.0 / st.sent as f64
    } else {
        0.0
    };
    format!(
        "  tunnel        {} packets sent, {} echoed back, {lost} lost ({pct:.2}%{note}), \
         {duplicates} duplicates\n",
        st.sent, st.echoed
    )
}

/// The summary as printed at the end.
pub fn render(s: &Summary) -> String {
    let mut out = String::from("\nSummary\n");
    out.push_str(&session_line(
        s.session_id.as_deref(),
        s.session_unchanged,
        "unchanged through every switch",
        "CHANGED (a new session was established)",
    ));
    out.push_str(&format!("  switches      {}\n", s.switches.len()));
    out.push_str(
        "      from → to      kind       interruption   detection   exchange   tunnel MTU   \
         tcp stall   cause\n",
    );
    for (i, w) in s.switches.iter().enumerate() {
        let r = &w.record;
        out.push_str(&format!(
            "   {}  {:<5}→ {:<6}  {:<9} {:>9.0} ms   {:>6} ms   {:>5} ms   {:>10}   {:>6.0} ms   \
             {}\n",
            i + 1,
            r.from,
            r.to,
            if r.planned {
                "planned"
            } else if r.cause == "address changed" {
                "rebinding"
            } else {
                "recovery"
            },
            w.interruption_ms,
            r.detection_ms,
            r.exchange_ms,
            w.tunnel_mtu,
            w.tcp_stall_ms,
            r.trigger
        ));
    }
    out.push_str(&tunnel_line(
        &s.stream,
        s.stream.duplicate_echoes + s.exit_duplicates,
        "",
    ));
    out.push_str(
        &tunnel_line(&s.stream6, s.stream6.duplicate_echoes, "").replacen(
            "  tunnel      ",
            "  tunnel IPv6 ",
            1,
        ),
    );
    let t = &s.tcp;
    out.push_str(&format!(
        "  tcp           {:.1} MB received in {:.1} s, {:.0} Mbit/s mean, longest stall {:.0} ms \
         (at {:.1} s){}\n",
        t.bytes as f64 / 1e6,
        t.duration.as_secs_f64(),
        t.mbit_s,
        t.longest_stall_ms,
        t.longest_stall_at_ms / 1e3,
        t.error
            .as_deref()
            .map(|e| format!("; the connection ended early: {e}"))
            .unwrap_or_default()
    ));
    out.push_str(&format!(
        "  tcp by link   {}\n",
        s.tcp_by_transport
            .iter()
            .map(|(n, m)| format!("{n} {m:.0} Mbit/s"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    out.push_str(&format!(
        "  non-bound     {} frames replayed on the unbound Wi-Fi: {} delivered (must be 0); \
         XDP stale_binding drops +{}\n",
        s.replayed, s.replayed_delivered, s.stale_drops
    ));
    out.push_str(&format!("  wall time     {:.1} s\n", s.wall.as_secs_f64()));
    out
}
