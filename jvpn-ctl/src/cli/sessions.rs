//! `jvpn-ctl sessions`, and what the control-socket verbs share: `--socket`, the
//! table layout and the duration / size / time formats.

use std::path::PathBuf;

use jvpn_ctl::control::{self, Client, Request, SessionInfo};

/// The gateway's control socket (every control verb takes it).
#[derive(clap::Args, Clone)]
pub struct SocketArgs {
    /// Control socket of the running gateway.
    #[arg(long, value_name = "PATH", default_value = control::DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

impl SocketArgs {
    pub fn connect(&self) -> anyhow::Result<Client> {
        Ok(Client::connect(&self.socket)?)
    }

    /// Sends `req`; with `json`, prints the answer as JSON and returns `None`,
    /// otherwise returns it decoded for a human rendering.
    pub fn query<T: serde::de::DeserializeOwned>(
        &self,
        req: &Request,
        json: bool,
    ) -> anyhow::Result<Option<T>> {
        let data = self.connect()?.request(req)?;
        if json {
            println!("{}", serde_json::to_string_pretty(&data)?);
            return Ok(None);
        }
        serde_json::from_value(data)
            .map(Some)
            .map_err(|e| anyhow::anyhow!("unexpected answer from the gateway: {e}"))
    }
}

#[derive(clap::Args)]
pub struct Args {
    /// Print the sessions as JSON (the control API's objects).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    socket: SocketArgs,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let Some(sessions) = args
        .socket
        .query::<Vec<SessionInfo>>(&Request::Sessions, args.json)?
    else {
        return Ok(());
    };
    print!("{}", render(&sessions));
    Ok(())
}

/// The sessions table; on a cluster node with an OWNER (node) and EPOCH column.
fn render(sessions: &[SessionInfo]) -> String {
    if sessions.is_empty() {
        return "no sessions\n".into();
    }
    let cluster = sessions.iter().any(|s| s.owner_node.is_some());
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let rows: Vec<Vec<String>> = sessions
        .iter()
        .map(|s| {
            let mut row = vec![
                s.id.to_string(),
                s.state.name().to_owned(),
                or_dash(s.binding.clone()),
                s.generation.to_string(),
            ];
            if cluster {
                row.push(or_dash(s.owner_node.map(|n| n.to_string())));
                row.push(or_dash(s.owner_epoch.map(|e| e.to_string())));
            }
            row.extend([
                s.tunnel_addr.clone(),
                peer_label(s),
                secs(s.age_s),
                millis(s.idle_ms),
                s.up_packets.to_string(),
                s.down_packets.to_string(),
            ]);
            row
        })
        .collect();
    let mut headers = vec!["ID", "STATE", "BINDING", "GEN"];
    let mut right = vec![false, false, false, true];
    if cluster {
        headers.extend(["OWNER", "EPOCH"]);
        right.extend([true, true]);
    }
    headers.extend(["TUNNEL", "PEER", "AGE", "IDLE", "UP", "DOWN"]);
    right.extend([false, false, true, true, true, true]);
    table(&headers, &right, &rows)
}

/// The peer's name, or the start of its key.
pub fn peer_label(s: &SessionInfo) -> String {
    match &s.peer_name {
        Some(name) => name.clone(),
        None if s.peer.len() > 12 => format!("{}…", &s.peer[..12]),
        None => s.peer.clone(),
    }
}

/// Columns padded to their widest cell; `right[i]` right-aligns column `i`.
pub fn table(headers: &[&str], right: &[bool], rows: &[Vec<String>]) -> String {
    let width = |s: &str| s.chars().count();
    let mut widths: Vec<usize> = headers.iter().map(|h| width(h)).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(width(cell));
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let pad = " ".repeat(widths[i].saturating_sub(width(cell)));
            if right.get(i).copied().unwrap_or(false) {
                line.push_str(&pad);
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&pad);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `42s`, `5m12s`, `2h05m`, `3d04h`.
pub fn secs(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// `120ms`, `3.2s`, then as [`secs`].
pub fn millis(ms: u64) -> String {
    match ms {
        0..1000 => format!("{ms}ms"),
        1000..60_000 => format!("{}.{}s", ms / 1000, ms % 1000 / 100),
        _ => secs(ms / 1000),
    }
}

/// `512 B`, `1.5 KiB`, `3.2 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Unix milliseconds as UTC `2025-01-02T03:04:05.678Z`.
pub fn timestamp(ms: u64) -> String {
    let (secs, frac) = (ms / 1000, ms % 1000);
    let (days, rem) = (secs / 86400, secs % 86400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{frac:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use jvpn_ctl::{control::SessionId, session::State};

    use super::*;

    fn info(id: u64, owner: Option<(u16, u64)>) -> SessionInfo {
        SessionInfo {
            id: SessionId(id),
            state: State::Attached,
            version: 3,
            peer: "ab".repeat(32),
            peer_name: Some("alice".into()),
            binding: Some("192.0.2.1:4000".into()),
            generation: 2,
            tunnel_addr: "10.77.0.2".into(),
            tunnel_addr6: None,
            age_s: 75,
            idle_ms: 120,
            switches: 1,
            up_packets: 10,
            up_bytes: 1000,
            down_packets: 20,
            down_bytes: 2000,
            stale_drops: 0,
            owner_node: owner.map(|o| o.0),
            owner_epoch: owner.map(|o| o.1),
        }
    }

    #[test]
    fn sessions_table() {
        assert_eq!(render(&[]), "no sessions\n");
        // A single gateway: no owner columns.
        assert_eq!(
            render(&[info(0xa1, None)]),
            "ID                STATE     BINDING         GEN  TUNNEL     PEER     AGE   IDLE  UP  DOWN\n\
             00000000000000a1  ATTACHED  192.0.2.1:4000    2  10.77.0.2  alice  1m15s  120ms  10    20\n"
        );
        // A cluster node: the owner and its epoch.
        assert_eq!(
            render(&[info(0xa1, Some((1, 57))), info(0xb2, Some((1, 1234)))]),
            "ID                STATE     BINDING         GEN  OWNER  EPOCH  TUNNEL     PEER     AGE   IDLE  UP  DOWN\n\
             00000000000000a1  ATTACHED  192.0.2.1:4000    2      1     57  10.77.0.2  alice  1m15s  120ms  10    20\n\
             00000000000000b2  ATTACHED  192.0.2.1:4000    2      1   1234  10.77.0.2  alice  1m15s  120ms  10    20\n"
        );
    }

    #[test]
    fn formats() {
        assert_eq!(secs(42), "42s");
        assert_eq!(secs(312), "5m12s");
        assert_eq!(secs(7500), "2h05m");
        assert_eq!(secs(3 * 86400 + 4 * 3600 + 5), "3d04h");
        assert_eq!(millis(120), "120ms");
        assert_eq!(millis(3250), "3.2s");
        assert_eq!(millis(61_000), "1m01s");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(timestamp(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(timestamp(1_767_225_599_999), "2025-12-31T23:59:59.999Z");
    }

    #[test]
    fn table_layout() {
        let t = table(
            &["ID", "N", "NAME"],
            &[false, true, false],
            &[
                vec!["a".into(), "1".into(), "x".into()],
                vec!["bbb".into(), "100".into(), "".into()],
            ],
        );
        assert_eq!(t, "ID     N  NAME\na      1  x\nbbb  100\n");
    }
}
