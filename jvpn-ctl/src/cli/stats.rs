//! `jvpn-ctl stats`.

use std::collections::BTreeMap;

use jvpn_ctl::{
    control::{Request, Stats},
    session::State,
};

use super::sessions::{SocketArgs, bytes, secs};

#[derive(clap::Args)]
pub struct Args {
    /// Print the counters as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    socket: SocketArgs,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let Some(stats) = args.socket.query::<Stats>(&Request::Stats, args.json)? else {
        return Ok(());
    };
    print!("{}", render(&stats));
    Ok(())
}

fn render(s: &Stats) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<16} {v}\n"));
    line("uptime", secs(s.uptime_s));
    let by_state: Vec<String> = State::ALL
        .iter()
        .map(|st| {
            let n = s.sessions_by_state.get(st.name()).copied().unwrap_or(0);
            format!("{} {n}", st.name())
        })
        .collect();
    line("sessions", by_state.join(", "));
    line(
        "up",
        format!("{} packets, {}", s.up_packets, bytes(s.up_bytes)),
    );
    line(
        "down",
        format!("{} packets, {}", s.down_packets, bytes(s.down_bytes)),
    );
    let suppressed = |r: &str| s.events_suppressed.get(r).copied().unwrap_or(0);
    line(
        "events",
        format!(
            "{} emitted, {} dropped, {} aggregated, {} over the log's rate; log rotated {}x",
            s.events_emitted,
            s.events_dropped,
            suppressed("aggregated"),
            suppressed("rate"),
            s.event_log_rotations
        ),
    );
    if let Some(h) = &s.next_hops {
        line(
            "next hops",
            format!(
                "{} valid of {} (for {} destinations), {} resyncs",
                h.valid, h.hops, h.destinations, h.resyncs
            ),
        );
    }
    line("security events", s.security_events.to_string());
    section(
        &mut out,
        "security events by kind",
        &s.security_by_kind,
        None,
    );
    section(&mut out, "reattach outcomes", &s.reattach, Some("success"));
    section(&mut out, "handshakes", &s.handshakes, Some("success"));
    section(&mut out, "malformed messages", &s.malformed, None);
    section(&mut out, "xdp drops", &s.xdp_drops, None);
    section(
        &mut out,
        "xdp answers (not drops)",
        &s.xdp_answered,
        Some("hello_cookie_sent"),
    );
    section(
        &mut out,
        "xdp relayed by the slow path",
        &s.xdp_slow_path,
        None,
    );
    out
}

/// A titled list of counters, `first` on top, the rest by name; `(none)` if empty.
fn section(out: &mut String, title: &str, map: &BTreeMap<String, u64>, first: Option<&str>) {
    out.push_str(&format!("\n{title}\n"));
    if map.is_empty() {
        out.push_str("  (none)\n");
        return;
    }
    let width = map.keys().map(|k| k.len()).max().unwrap_or(0);
    let head = first.and_then(|f| map.get_key_value(f));
    let rest = map.iter().filter(|(k, _)| Some(k.as_str()) != first);
    for (k, v) in head.into_iter().chain(rest) {
        out.push_str(&format!("  {k:<width$}  {v:>10}\n"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let s = Stats {
            uptime_s: 75,
            sessions_by_state: [("ATTACHED".to_owned(), 2)].into(),
            reattach: [("replay".to_owned(), 1), ("success".to_owned(), 4)].into(),
            security_events: 3,
            security_by_kind: [("bad_signature".to_owned(), 3)].into(),
            events_emitted: 9,
            events_suppressed: [("aggregated".to_owned(), 2)].into(),
            ..Stats::default()
        };
        let text = render(&s);
        assert!(
            text.starts_with(
                "uptime           1m15s\nsessions         BIRTH 0, ATTACHED 2, VOLATILE 0"
            ),
            "{text}"
        );
        assert!(
            text.contains("\nreattach outcomes\n  success           4\n  replay            1\n"),
            "{text}"
        );
        assert!(text.contains("\nxdp drops\n  (none)\n"), "{text}");
        assert!(
            text.contains(
                "\nevents           9 emitted, 0 dropped, 2 aggregated, 0 over the log's rate; \
                 log rotated 0x\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("\nsecurity events by kind\n  bad_signature           3\n"),
            "{text}"
        );
    }
}
