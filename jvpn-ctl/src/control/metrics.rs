//! The Prometheus endpoint: the figures of `jvpn-ctl stats` in the text exposition
//! format 0.0.4, served by a minimal HTTP/1.1 server (`GET /metrics`).

use std::{collections::BTreeMap, fmt::Write as _, io, net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, mpsc},
    task::{JoinHandle, JoinSet},
    time::timeout,
};

use super::{
    ControlError,
    api::{
        ClusterStats, OWNERSHIP_KINDS, Request, Response, SECURITY_KINDS, SUPPRESSED_REASONS, Stats,
    },
    server::{Call, ask_core},
};
use crate::session::{Detail, State};

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders `stats` in the Prometheus text format 0.0.4. Every state and every
/// reattach outcome is always present (as 0 if absent from `stats`), so series do
/// not appear and vanish.
pub fn render(stats: &Stats) -> String {
    let mut out = String::new();
    let states: Vec<&str> = State::ALL.iter().map(|s| s.name()).collect();
    let outcomes: Vec<&str> = std::iter::once("success")
        .chain(Detail::ALL.iter().map(|d| d.name()))
        .collect();
    let pairs = |map: &BTreeMap<String, u64>| -> Vec<(String, u64)> {
        map.iter().map(|(k, n)| (k.clone(), *n)).collect()
    };

    family(
        &mut out,
        "jvpn_sessions",
        "Current sessions by state.",
        "gauge",
        "state",
        &with_all(&stats.sessions_by_state, &states),
    );
    family(
        &mut out,
        "jvpn_reattach_total",
        "Reattach attempts by outcome: success or the refusal detail.",
        "counter",
        "outcome",
        &with_all(&stats.reattach, &outcomes),
    );
    family(
        &mut out,
        "jvpn_handshakes_total",
        "Handshakes by result.",
        "counter",
        "result",
        &pairs(&stats.handshakes),
    );
    family(
        &mut out,
        "jvpn_xdp_drops_total",
        "Packets dropped by the XDP data plane, by reason.",
        "counter",
        "reason",
        &pairs(&stats.xdp_drops),
    );
    family(
        &mut out,
        "jvpn_xdp_answered_total",
        "HELLOs the XDP data plane answered itself with a COOKIE (XDP_TX) instead of \
         passing them on, under load: all of them (hello_cookie_sent), and those whose \
         cookie was invalid (cookie_invalid).",
        "counter",
        "reason",
        &with_all(
            &stats.xdp_answered,
            &["hello_cookie_sent", "cookie_invalid"],
        ),
    );
    family(
        &mut out,
        "jvpn_xdp_slow_path_total",
        "DATA the XDP data plane relayed by a slower path: no valid next-hop table \
         entry, so the kernel's FIB was asked (next_hop_fib); no valid copy of the \
         session's entry in its slot, so SESSIONS was looked up (session_lookup).",
        "counter",
        "reason",
        &with_all(&stats.xdp_slow_path, &["next_hop_fib", "session_lookup"]),
    );
    family(
        &mut out,
        "jvpn_keepalive_answers_total",
        "KEEPALIVE answers: from the binding, not bound (a rebinding signal), or not \
         answered over the per-session rate.",
        "counter",
        "outcome",
        &with_all(
            &stats.keepalives,
            &["from_binding", "not_bound", "not_bound_limited"],
        ),
    );
    family(
        &mut out,
        "jvpn_malformed_total",
        "Malformed control messages, by message type.",
        "counter",
        "type",
        &pairs(&stats.malformed),
    );
    let directions = |up: u64, down: u64| vec![("up".to_owned(), up), ("down".to_owned(), down)];
    family(
        &mut out,
        "jvpn_packets_total",
        "Data packets relayed, by direction (up: client to exit).",
        "counter",
        "direction",
        &directions(stats.up_packets, stats.down_packets),
    );
    family(
        &mut out,
        "jvpn_bytes_total",
        "Data bytes relayed, by direction (up: client to exit).",
        "counter",
        "direction",
        &directions(stats.up_bytes, stats.down_bytes),
    );
    family(
        &mut out,
        "jvpn_security_events_total",
        "Security events by kind (invalid proofs, replays, stale requests, unknown peers, \
         ...), every one, published or only counted in a SECURITY_SUMMARY.",
        "counter",
        "kind",
        &with_all(&stats.security_by_kind, &SECURITY_KINDS),
    );
    scalar(
        &mut out,
        "jvpn_events_total",
        "Events emitted.",
        "counter",
        stats.events_emitted,
    );
    scalar(
        &mut out,
        "jvpn_events_dropped_total",
        "Events lost: event log full or failing, followers that fell behind.",
        "counter",
        stats.events_dropped,
    );
    family(
        &mut out,
        "jvpn_events_suppressed_total",
        "Events left out on purpose, by reason: aggregated (security events only counted, \
         in a SECURITY_SUMMARY), rate (event log lines over its byte rate, in an \
         EVENTS_SUPPRESSED line).",
        "counter",
        "reason",
        &with_all(&stats.events_suppressed, &SUPPRESSED_REASONS),
    );
    scalar(
        &mut out,
        "jvpn_event_log_rotations_total",
        "Times the event log reached event_log_max_bytes and was renamed to <file>.1.",
        "counter",
        stats.event_log_rotations,
    );
    scalar(
        &mut out,
        "jvpn_uptime_seconds",
        "Seconds since the gateway started.",
        "gauge",
        stats.uptime_s,
    );
    if let Some(h) = &stats.next_hops {
        family(
            &mut out,
            "jvpn_next_hops",
            "Next hops in the XDP next-hop table: valid, or invalid (their packets take \
             the slow path until the kernel resolves them).",
            "gauge",
            "state",
            &[
                ("valid".to_owned(), u64::from(h.valid)),
                (
                    "invalid".to_owned(),
                    u64::from(h.hops - h.valid.min(h.hops)),
                ),
            ],
        );
        scalar(
            &mut out,
            "jvpn_next_hop_resyncs_total",
            "Times the next-hop table resolved every destination again (a link, address \
             or route changed, or notifications were lost).",
            "counter",
            h.resyncs,
        );
    }
    if let Some(c) = &stats.cluster {
        cluster(&mut out, c);
    }
    out
}

/// `all` in their order (0 if absent from `map`), then the rest of `map`.
fn with_all(map: &BTreeMap<String, u64>, all: &[&str]) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = all
        .iter()
        .map(|k| (k.to_string(), map.get(*k).copied().unwrap_or(0)))
        .collect();
    v.extend(
        map.iter()
            .filter(|(k, _)| !all.contains(&k.as_str()))
            .map(|(k, n)| (k.clone(), *n)),
    );
    v
}

/// The families of a cluster node (a single gateway has none of them).
fn cluster(out: &mut String, c: &ClusterStats) {
    family(
        out,
        "jvpn_ownership_changes_total",
        "Cluster ownership changes by kind: adopting (a takeover began), acquired (a new \
         epoch written), lost (another node took a session), refused (a write etcd did \
         not take), in_doubt (a write without an answer), no_lease (a write not sent: the \
         node's lease is not confirmed).",
        "counter",
        "kind",
        &with_all(&c.ownership, &OWNERSHIP_KINDS),
    );
    let s = &c.sessions;
    family(
        out,
        "jvpn_cluster_sessions",
        "The cluster's sessions at this node by owner: this node, another node, none \
         (its owner's lease ran out, not taken over yet).",
        "gauge",
        "owner",
        &[
            ("this_node".to_owned(), s.owned),
            ("other_node".to_owned(), s.foreign.saturating_sub(s.unowned)),
            ("none".to_owned(), s.unowned),
        ],
    );
    scalar(
        out,
        "jvpn_cluster_lease_live",
        "1 while this node's lease is live by its own deadline (it may change bindings \
         and take sessions over), else 0.",
        "gauge",
        u64::from(c.lease_live),
    );
    scalar(
        out,
        "jvpn_cluster_node",
        "This node's number in the cluster.",
        "gauge",
        u64::from(c.node),
    );
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let help = help.replace('\\', r"\\").replace('\n', r"\n");
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn family(
    out: &mut String,
    name: &str,
    help: &str,
    kind: &str,
    label: &str,
    samples: &[(String, u64)],
) {
    header(out, name, help, kind);
    for (value, n) in samples {
        let _ = writeln!(out, "{name}{{{label}=\"{}\"}} {n}", escape_label(value));
    }
}

fn scalar(out: &mut String, name: &str, help: &str, kind: &str, n: u64) {
    header(out, name, help, kind);
    let _ = writeln!(out, "{name} {n}");
}

fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str(r"\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str(r"\n"),
            c => s.push(c),
        }
    }
    s
}

/// Longest request head accepted.
const MAX_HEAD: usize = 8 * 1024;
/// A client must send its request head within this.
const READ_TIMEOUT: Duration = if cfg!(test) {
    Duration::from_millis(300)
} else {
    Duration::from_secs(5)
};
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_CONNECTIONS: usize = 64;

/// Binds `addr` and serves `GET /metrics` from the gateway core's [`Request::Stats`]
/// answers. Abort the handle to stop (that closes every connection too).
pub async fn serve(
    addr: SocketAddr,
    calls: mpsc::Sender<Call>,
) -> Result<JoinHandle<()>, ControlError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|cause| ControlError::Bind { addr, cause })?;
    Ok(spawn(listener, calls))
}

/// [`serve`] on a listener the caller bound (e.g. to learn a port chosen by the OS).
pub fn spawn(listener: TcpListener, calls: mpsc::Sender<Call>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut conns = JoinSet::new();
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        // At the limit, new connections are closed at once.
                        if let Ok(slot) = slots.clone().try_acquire_owned() {
                            let calls = calls.clone();
                            conns.spawn(async move {
                                let _ = connection(stream, &calls).await;
                                drop(slot);
                            });
                        }
                    }
                    Err(e) => {
                        tracing::warn!("metrics endpoint: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
    })
}

enum Head {
    Complete(Vec<u8>),
    TooLarge,
    Closed,
}

async fn read_head(stream: &mut TcpStream) -> io::Result<Head> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(Head::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = find_end(&buf) {
            buf.truncate(end);
            return Ok(Head::Complete(buf));
        }
        if buf.len() > MAX_HEAD {
            return Ok(Head::TooLarge);
        }
    }
}

/// End of the request head (blank line, CRLF or bare LF).
fn find_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = buf.windows(2).position(|w| w == b"\n\n");
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

async fn connection(mut stream: TcpStream, calls: &mpsc::Sender<Call>) -> io::Result<()> {
    let head = match timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(Head::Complete(h))) => h,
        Ok(Ok(Head::Closed)) | Ok(Err(_)) => return Ok(()),
        Ok(Ok(Head::TooLarge)) => {
            return reply(
                &mut stream,
                431,
                "Request Header Fields Too Large",
                "request head too large\n",
                false,
            )
            .await;
        }
        Err(_) => {
            return reply(
                &mut stream,
                408,
                "Request Timeout",
                "request timeout\n",
                false,
            )
            .await;
        }
    };
    let line = head
        .split(|&b| b == b'\n')
        .next()
        .and_then(|l| std::str::from_utf8(l).ok())
        .unwrap_or("")
        .trim_end_matches('\r');
    let parts: Vec<&str> = line.split(' ').collect();
    let (method, target) = match parts[..] {
        [method, target, version]
            if version.starts_with("HTTP/1.") && target.starts_with('/') && !method.is_empty() =>
        {
            (method, target)
        }
        _ => {
            return reply(
                &mut stream,
                400,
                "Bad Request",
                "malformed request line\n",
                false,
            )
            .await;
        }
    };
    let head_only = method == "HEAD";
    let path = target.split(['?', '#']).next().unwrap_or(target);
    if path != "/metrics" {
        return reply(
            &mut stream,
            404,
            "Not Found",
            "not found; try /metrics\n",
            head_only,
        )
        .await;
    }
    if method != "GET" && !head_only {
        return reply(
            &mut stream,
            405,
            "Method Not Allowed",
            "only GET and HEAD\n",
            false,
        )
        .await;
    }
    match ask_core(calls, Request::Stats).await {
        Response::Ok { data } => match serde_json::from_value::<Stats>(data) {
            Ok(stats) => {
                reply_with(
                    &mut stream,
                    200,
                    "OK",
                    CONTENT_TYPE,
                    &render(&stats),
                    head_only,
                )
                .await
            }
            Err(e) => {
                let body = format!("bad stats from the gateway: {e}\n");
                reply(&mut stream, 500, "Internal Server Error", &body, head_only).await
            }
        },
        Response::Error { error } => {
            reply(
                &mut stream,
                503,
                "Service Unavailable",
                &format!("{error}\n"),
                head_only,
            )
            .await
        }
    }
}

async fn reply(
    stream: &mut TcpStream,
    code: u16,
    status: &str,
    body: &str,
    head_only: bool,
) -> io::Result<()> {
    reply_with(
        stream,
        code,
        status,
        "text/plain; charset=utf-8",
        body,
        head_only,
    )
    .await
}

async fn reply_with(
    stream: &mut TcpStream,
    code: u16,
    status: &str,
    content_type: &str,
    body: &str,
    head_only: bool,
) -> io::Result<()> {
    let mut msg = format!(
        "HTTP/1.1 {code} {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if code == 405 {
        msg.push_str("Allow: GET, HEAD\r\n");
    }
    msg.push_str("\r\n");
    if !head_only {
        msg.push_str(body);
    }
    let write = async {
        stream.write_all(msg.as_bytes()).await?;
        stream.shutdown().await
    };
    timeout(WRITE_TIMEOUT, write)
        .await
        .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::api::NextHopStats;

    fn sample() -> Stats {
        Stats {
            uptime_s: 42,
            sessions_by_state: [("ATTACHED".to_owned(), 3), ("VOLATILE".to_owned(), 1)].into(),
            reattach: [("success".to_owned(), 7), ("replay".to_owned(), 2)].into(),
            handshakes: [("success".to_owned(), 5), ("unknown_peer".to_owned(), 1)].into(),
            malformed: [("HELLO".to_owned(), 4)].into(),
            keepalives: [("not_bound".to_owned(), 3)].into(),
            security_events: 6,
            security_by_kind: [("replay".to_owned(), 2), ("bad_signature".to_owned(), 4)].into(),
            xdp_drops: [
                ("stale_binding".to_owned(), 11),
                ("we\"ird\\\n".to_owned(), 1),
            ]
            .into(),
            xdp_answered: [("hello_cookie_sent".to_owned(), 8)].into(),
            xdp_slow_path: [("next_hop_fib".to_owned(), 5)].into(),
            up_packets: 100,
            up_bytes: 10_000,
            down_packets: 200,
            down_bytes: 20_000,
            events_emitted: 30,
            events_dropped: 2,
            events_suppressed: [("aggregated".to_owned(), 5)].into(),
            event_log_rotations: 1,
            cluster: None,
            next_hops: Some(NextHopStats {
                hops: 3,
                valid: 2,
                destinations: 7,
                resyncs: 4,
            }),
        }
    }

    #[test]
    fn golden_snippets() {
        let text = render(&sample());
        for snippet in [
            "# HELP jvpn_sessions Current sessions by state.\n# TYPE jvpn_sessions gauge\n\
             jvpn_sessions{state=\"BIRTH\"} 0\njvpn_sessions{state=\"ATTACHED\"} 3\n\
             jvpn_sessions{state=\"VOLATILE\"} 1\njvpn_sessions{state=\"DEGRADED\"} 0\n\
             jvpn_sessions{state=\"RECOVERING\"} 0\njvpn_sessions{state=\"TERMINATED\"} 0\n",
            "# TYPE jvpn_reattach_total counter\njvpn_reattach_total{outcome=\"success\"} 7\n\
             jvpn_reattach_total{outcome=\"proof_invalid\"} 0\n",
            "jvpn_reattach_total{outcome=\"replay\"} 2\n",
            "jvpn_reattach_total{outcome=\"datapath_error\"} 0\n",
            "jvpn_handshakes_total{result=\"success\"} 5\njvpn_handshakes_total{result=\"unknown_peer\"} 1\n",
            "jvpn_malformed_total{type=\"HELLO\"} 4\n",
            "# TYPE jvpn_xdp_answered_total counter\n\
             jvpn_xdp_answered_total{reason=\"hello_cookie_sent\"} 8\n\
             jvpn_xdp_answered_total{reason=\"cookie_invalid\"} 0\n",
            "jvpn_xdp_drops_total{reason=\"stale_binding\"} 11\n",
            "jvpn_xdp_drops_total{reason=\"we\\\"ird\\\\\\n\"} 1\n",
            "# TYPE jvpn_packets_total counter\njvpn_packets_total{direction=\"up\"} 100\n\
             jvpn_packets_total{direction=\"down\"} 200\n",
            "jvpn_bytes_total{direction=\"up\"} 10000\njvpn_bytes_total{direction=\"down\"} 20000\n",
            "# TYPE jvpn_security_events_total counter\n\
             jvpn_security_events_total{kind=\"proof_invalid\"} 0\n\
             jvpn_security_events_total{kind=\"freshness_expired\"} 0\n\
             jvpn_security_events_total{kind=\"replay\"} 2\n\
             jvpn_security_events_total{kind=\"source_banned\"} 0\n\
             jvpn_security_events_total{kind=\"before_start\"} 0\n\
             jvpn_security_events_total{kind=\"unknown_peer\"} 0\n\
             jvpn_security_events_total{kind=\"bad_signature\"} 4\n",
            "# TYPE jvpn_events_suppressed_total counter\n\
             jvpn_events_suppressed_total{reason=\"aggregated\"} 5\n\
             jvpn_events_suppressed_total{reason=\"rate\"} 0\n",
            "# TYPE jvpn_event_log_rotations_total counter\njvpn_event_log_rotations_total 1\n",
            "# TYPE jvpn_events_total counter\njvpn_events_total 30\n",
            "# TYPE jvpn_events_dropped_total counter\njvpn_events_dropped_total 2\n",
            "# TYPE jvpn_uptime_seconds gauge\njvpn_uptime_seconds 42\n",
            "# TYPE jvpn_xdp_slow_path_total counter\n\
             jvpn_xdp_slow_path_total{reason=\"next_hop_fib\"} 5\n\
             jvpn_xdp_slow_path_total{reason=\"session_lookup\"} 0\n",
            "jvpn_next_hops{state=\"valid\"} 2\njvpn_next_hops{state=\"invalid\"} 1\n",
            "# TYPE jvpn_next_hop_resyncs_total counter\njvpn_next_hop_resyncs_total 4\n",
        ] {
            assert!(text.contains(snippet), "missing {snippet:?} in\n{text}");
        }
        // Every line is a comment or `name{labels} value`.
        for line in text.lines() {
            assert!(
                line.starts_with("# HELP jvpn_")
                    || line.starts_with("# TYPE jvpn_")
                    || (line.starts_with("jvpn_")
                        && line.rsplit(' ').next().unwrap().parse::<u64>().is_ok()),
                "{line:?}"
            );
        }
        // All twelve outcomes (success and every detail), even from empty stats.
        let empty = render(&Stats::default());
        assert_eq!(empty.matches("jvpn_reattach_total{").count(), 12);
        assert_eq!(empty.matches("jvpn_sessions{").count(), 6);
        assert_eq!(empty.matches("jvpn_security_events_total{").count(), 7);
        assert_eq!(empty.matches("jvpn_events_suppressed_total{").count(), 2);
    }

    #[test]
    fn cluster_families() {
        // A single gateway has none of them.
        let single = render(&sample());
        assert!(!single.contains("jvpn_ownership_") && !single.contains("jvpn_cluster_"));
        // ownership_ambiguous denials are reattach outcomes, present from the start.
        assert!(single.contains("jvpn_reattach_total{outcome=\"ownership_ambiguous\"} 0\n"));
        let stats = Stats {
            cluster: Some(ClusterStats {
                node: 2,
                lease_live: true,
                sessions: crate::control::api::ClusterSessions {
                    owned: 3,
                    foreign: 5,
                    unowned: 1,
                },
                ownership: [("acquired".to_owned(), 4), ("new_kind".to_owned(), 1)].into(),
            }),
            ..sample()
        };
        let text = render(&stats);
        for snippet in [
            "# TYPE jvpn_ownership_changes_total counter\n\
             jvpn_ownership_changes_total{kind=\"adopting\"} 0\n\
             jvpn_ownership_changes_total{kind=\"acquired\"} 4\n\
             jvpn_ownership_changes_total{kind=\"lost\"} 0\n\
             jvpn_ownership_changes_total{kind=\"refused\"} 0\n\
             jvpn_ownership_changes_total{kind=\"in_doubt\"} 0\n\
             jvpn_ownership_changes_total{kind=\"no_lease\"} 0\n\
             jvpn_ownership_changes_total{kind=\"new_kind\"} 1\n",
            "# TYPE jvpn_cluster_sessions gauge\n\
             jvpn_cluster_sessions{owner=\"this_node\"} 3\n\
             jvpn_cluster_sessions{owner=\"other_node\"} 4\n\
             jvpn_cluster_sessions{owner=\"none\"} 1\n",
            "# TYPE jvpn_cluster_lease_live gauge\njvpn_cluster_lease_live 1\n",
            "# TYPE jvpn_cluster_node gauge\njvpn_cluster_node 2\n",
        ] {
            assert!(text.contains(snippet), "missing {snippet:?} in\n{text}");
        }
        let mut down = stats.clone();
        down.cluster.as_mut().unwrap().lease_live = false;
        assert!(render(&down).contains("\njvpn_cluster_lease_live 0\n"));
    }

    fn fake_core() -> mpsc::Sender<Call> {
        let (tx, mut rx) = mpsc::channel::<Call>(4);
        tokio::spawn(async move {
            while let Some(call) = rx.recv().await {
                let r = match call.request {
                    Request::Stats => Response::ok(&sample()),
                    _ => Response::error("unexpected"),
                };
                let _ = call.reply.send(r);
            }
        });
        tx
    }

    async fn http(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = String::new();
        timeout(Duration::from_secs(10), s.read_to_string(&mut out))
            .await
            .unwrap()
            .unwrap();
        out
    }

    #[tokio::test]
    async fn http_endpoint() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = spawn(listener, fake_core());

        let r = http(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let (head, body) = r.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.contains("Content-Type: text/plain; version=0.0.4"),
            "{head}"
        );
        assert!(
            head.contains(&format!("Content-Length: {}", body.len())),
            "{head}"
        );
        assert_eq!(body, render(&sample()));

        let r = http(addr, b"GET /metrics?x=1 HTTP/1.0\n\n").await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        let r = http(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
        assert!(
            r.starts_with("HTTP/1.1 200 OK\r\n") && r.ends_with("\r\n\r\n"),
            "{r}"
        );
        let r = http(addr, b"GET / HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 404 Not Found\r\n"), "{r}");
        let r = http(addr, b"POST /metrics HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 405 "), "{r}");
        for bad in [
            &b"hello\r\n\r\n"[..],
            b"GET /metrics\r\n\r\n",
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics SPDY/3\r\n\r\n",
        ] {
            let r = http(addr, bad).await;
            assert!(r.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{r}");
        }
        let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        huge.extend(std::iter::repeat_n(b'a', MAX_HEAD + 10));
        let r = http(addr, &huge).await;
        assert!(r.starts_with("HTTP/1.1 431 "), "{r}");
        task.abort();
    }

    #[tokio::test]
    async fn read_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _task = spawn(listener, fake_core());
        // Half a request, then silence.
        let r = http(addr, b"GET /metrics HTTP/1.1\r\n").await;
        assert!(r.starts_with("HTTP/1.1 408 "), "{r}");
    }

    #[tokio::test]
    async fn core_gone_is_503() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (calls, rx) = mpsc::channel(1);
        drop(rx);
        let _task = spawn(listener, calls);
        let r = http(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 503 "), "{r}");
        assert!(r.ends_with("the gateway is shutting down\n"), "{r}");
    }

    #[tokio::test]
    async fn bind_error_names_the_address() {
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap();
        let e = serve(addr, fake_core()).await.err().unwrap();
        assert!(
            e.to_string()
                .starts_with(&format!("cannot bind metrics endpoint {addr}: ")),
            "{e}"
        );
    }
}
