//! The families against golden snippets, `promtool check metrics` on them, and the
//! HTTP endpoint's answers.

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot},
    time::timeout,
};

use super::*;
use crate::control::api::{ClusterStats, NextHopStats};

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

#[test]
fn promtool_accepts_the_families() {
    let Some(promtool) = ["/usr/bin/promtool", "/usr/local/bin/promtool"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
    else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "promtool missing and CI=true: `cargo xtask test` installs Debian's prometheus"
        );
        eprintln!("SKIPPED promtool_accepts_the_families: no promtool (Debian: prometheus)");
        return;
    };
    let mut stats = sample();
    stats.cluster = Some(ClusterStats {
        node: 1,
        lease_live: true,
        sessions: Default::default(),
        ownership: Default::default(),
    });
    for text in [render(&stats), render(&Stats::default())] {
        let mut child = std::process::Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
            "promtool: {}{}\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn fake_core() -> StatsAsk {
    let (tx, mut rx) = mpsc::channel::<oneshot::Sender<Stats>>(4);
    tokio::spawn(async move {
        while let Some(reply) = rx.recv().await {
            let _ = reply.send(sample());
        }
    });
    tx
}

async fn http(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = String::new();
    let _ = timeout(Duration::from_secs(10), s.read_to_string(&mut out))
        .await
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
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert!(
        head.contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert!(
        head.contains(&format!("content-length: {}", body.len())),
        "{head}"
    );
    assert_eq!(body, render(&sample()));

    let r = http(addr, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n").await;
    assert!(
        r.starts_with("HTTP/1.0 200 OK\r\n") || r.starts_with("HTTP/1.1 200 OK\r\n"),
        "{r}"
    );
    let r = http(addr, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(
        r.starts_with("HTTP/1.1 200 OK\r\n") && r.ends_with("\r\n\r\n"),
        "{r}"
    );
    let r = http(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 404 Not Found\r\n"), "{r}");
    let r = http(addr, b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 405 "), "{r}");
    assert!(r.to_ascii_lowercase().contains("allow: get, head"), "{r}");
    for bad in [&b"hello\r\n\r\n"[..], b"GET /metrics SPDY/3\r\n\r\n"] {
        let r = http(addr, bad).await;
        assert!(
            r.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{bad:?}: {r}"
        );
    }
    let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 512 * 1024));
    let r = http(addr, &huge).await;
    assert!(r.starts_with("HTTP/1.1 431 "), "{r}");
    task.abort();
}

#[tokio::test]
async fn a_slow_client_is_disconnected() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _task = spawn(listener, fake_core());
    // Half a request, then silence: the server ends it (a 408, or closed unanswered).
    let started = std::time::Instant::now();
    let r = http(addr, b"GET /metrics HTTP/1.1\r\n").await;
    assert!(r.is_empty() || r.starts_with("HTTP/1.1 408 "), "{r}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn core_gone_is_503() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stats, rx) = mpsc::channel(1);
    drop(rx);
    let _task = spawn(listener, stats);
    let r = http(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
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
