//! `jvpn-ctl events [--follow] [--json]`.

use jvpn_ctl::control::{EventRecord, Request};

use super::sessions::{SocketArgs, timestamp};

#[derive(clap::Args)]
pub struct Args {
    /// After the recent events, keep printing new ones as they happen (until
    /// interrupted; a reader too slow to keep up is disconnected with an error).
    #[arg(long, short)]
    follow: bool,
    /// Print each event as its JSON line (as in the event log).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    socket: SocketArgs,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let client = args.socket.connect()?;
    let print = |line: &str| {
        if args.json {
            println!("{line}");
        } else {
            match serde_json::from_str::<EventRecord>(line) {
                Ok(ev) => println!("{}", one_line(&ev)),
                // A kind this CLI does not know: show it as it came.
                Err(_) => println!("{line}"),
            }
        }
    };
    if args.follow {
        client.follow_raw(|line| {
            print(line);
            true
        })?;
        return Ok(());
    }
    let mut client = client;
    let data = client.request(&Request::Events { follow: false })?;
    let serde_json::Value::Array(events) = data else {
        anyhow::bail!("unexpected answer from the gateway: not a list of events");
    };
    for ev in events {
        // Known events in their canonical field order (as in the event log and the
        // follow stream); anything else as it came.
        let line = serde_json::from_value::<EventRecord>(ev.clone())
            .ok()
            .and_then(|e| serde_json::to_string(&e).ok())
            .unwrap_or_else(|| ev.to_string());
        print(&line);
    }
    Ok(())
}

/// `2025-01-02T03:04:05.678Z STATE_CHANGE 00000000000000a1 ATTACHED -> VOLATILE (transport_volatile) v3`
fn one_line(ev: &EventRecord) -> String {
    let ts = timestamp(ev.ts_ms());
    let kind = ev.kind();
    let id = ev
        .session_id()
        .map_or_else(|| "-".repeat(16), |id| id.to_string());
    let rest = match ev {
        EventRecord::StateChange {
            from,
            to,
            reason,
            detail,
            version,
            ..
        } => {
            let reason = serde_plain(reason);
            let why = match detail {
                Some(d) => format!("{reason}: {}", d.name()),
                None => reason,
            };
            format!("{} -> {} ({why}) v{version}", from.name(), to.name())
        }
        EventRecord::TransportSwitch {
            old,
            new,
            generation,
            ..
        } => format!(
            "{} -> {new} gen {generation}",
            old.as_deref().unwrap_or("-")
        ),
        EventRecord::TransportSwitchDenied {
            candidate, detail, ..
        } => format!("{candidate} refused ({})", detail.name()),
        EventRecord::SecurityEvent { source, kind, .. } => format!("{kind} from {source}"),
        EventRecord::SecuritySummary {
            kind,
            prefix,
            count,
            suppressed,
            interval_ms,
            ..
        } => {
            format!("{kind} from {prefix}: {count} in {interval_ms} ms ({suppressed} only counted)")
        }
        EventRecord::EventsSuppressed { count, bytes, .. } => {
            format!("{count} events ({bytes} bytes) left out of the event log over its rate")
        }
        EventRecord::OwnershipChange {
            from_node,
            to_node,
            epoch,
            ..
        } => match from_node {
            Some(f) => format!("owner node {f} -> node {to_node} (epoch {epoch})"),
            None => format!("no owner -> node {to_node} (epoch {epoch})"),
        },
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
            "resumed {resumed} (map entries restored {reinstalled}), removed {removed}, \
             expired {expired}"
        ),
    };
    format!("{ts} {kind} {id} {rest}")
}

/// A unit enum variant's serde name (`reattach_success`).
fn serde_plain<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => "?".into(),
    }
}

#[cfg(test)]
mod tests {
    use jvpn_ctl::{
        control::SessionId,
        session::{Detail, Reason, State},
    };

    use super::*;

    #[test]
    fn one_liners() {
        let id = SessionId(0xa1);
        assert_eq!(
            one_line(&EventRecord::StateChange {
                ts_ms: 1_000,
                session_id: id,
                from: State::Recovering,
                to: State::Degraded,
                reason: Reason::ReattachValidationFailed,
                detail: Some(Detail::RateLimited),
                version: 7,
            }),
            "1970-01-01T00:00:01.000Z STATE_CHANGE 00000000000000a1 RECOVERING -> DEGRADED \
             (reattach_validation_failed: rate_limited) v7"
        );
        assert_eq!(
            one_line(&EventRecord::TransportSwitch {
                ts_ms: 0,
                session_id: id,
                old: Some("192.0.2.1:1".into()),
                new: "192.0.2.2:2".into(),
                generation: 2,
            }),
            "1970-01-01T00:00:00.000Z TRANSPORT_SWITCH 00000000000000a1 192.0.2.1:1 -> 192.0.2.2:2 gen 2"
        );
        assert_eq!(
            one_line(&EventRecord::SecurityEvent {
                ts_ms: 0,
                session_id: None,
                source: "198.51.100.7:9".into(),
                kind: "replay".into(),
            }),
            "1970-01-01T00:00:00.000Z SECURITY_EVENT ---------------- replay from 198.51.100.7:9"
        );
        assert_eq!(
            one_line(&EventRecord::SecuritySummary {
                ts_ms: 0,
                kind: "bad_signature".into(),
                prefix: "10.77.2.0/24".into(),
                count: 1_200,
                suppressed: 1_199,
                interval_ms: 1_000,
                session_id: None,
            }),
            "1970-01-01T00:00:00.000Z SECURITY_SUMMARY ---------------- bad_signature from \
             10.77.2.0/24: 1200 in 1000 ms (1199 only counted)"
        );
    }
}
