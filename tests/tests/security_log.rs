//! Bounded security logging (docs/gateway.md, "Events"): a flood of HELLOs with bad
//! signatures against the lab gateway — real processes, real XDP relay — publishes
//! one SECURITY_EVENT per source prefix and interval and a SECURITY_SUMMARY for the
//! rest, the event log stays under its configured caps, and the published events and
//! the summaries add up exactly to the metric.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use jvpn_ctl::{
    control::api::EventRecord,
    lab::gateway::Transport::{Lte6, Wifi},
    proto::ClientHandshake,
};
use jvpn_tests::{gwlab::GwLab, require_root, tclient::now_ms};

const RATE: u64 = 16 * 1024;
const MAX: u64 = 1 << 20;
const INTERVAL_MS: u64 = 500;
const HELLOS: usize = 3_000;

/// A summary's (prefix, count, suppressed, interval_ms).
type Summary = (String, u64, u64, u64);

/// (published SECURITY_EVENTs, summed `suppressed` of the SECURITY_SUMMARYs, the
/// summaries) of `kind`.
fn tally(events: &[EventRecord], kind: &str) -> (u64, u64, Vec<Summary>) {
    let (mut published, mut suppressed, mut summaries) = (0, 0, Vec::new());
    for e in events {
        match e {
            EventRecord::SecurityEvent { kind: k, .. } if k == kind => published += 1,
            EventRecord::SecuritySummary {
                kind: k,
                prefix,
                count,
                suppressed: s,
                interval_ms,
                ..
            } if k == kind => {
                suppressed += s;
                summaries.push((prefix.clone(), *count, *s, *interval_ms));
            }
            _ => {}
        }
    }
    (published, suppressed, summaries)
}

fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

#[test]
fn a_bad_hello_flood_is_aggregated_and_the_event_log_stays_under_its_caps() {
    require_root!();
    let mut lab = GwLab::start("gsl", "");
    // The caps under test, next to event_log, and a fresh log: the gateway again.
    lab.stop("gateway");
    let log = lab.dir.join("gateway-events.jsonl");
    std::fs::remove_file(&log).unwrap();
    let config = lab.dir.join("gateway.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let at = text
        .find("event_log = ")
        .expect("the lab's gateway has an event log");
    let at = at + text[at..].find('\n').unwrap() + 1;
    let caps = format!(
        "event_log_rate_bytes = {RATE}\nevent_log_max_bytes = {MAX}\n\
         security_aggregate_ms = {INTERVAL_MS}\n"
    );
    std::fs::write(&config, format!("{}{caps}{}", &text[..at], &text[at..])).unwrap();
    lab.restart("gateway", false)
        .expect("restarting the gateway");
    let started = Instant::now();

    // HELLOs of the allowed client, each signature broken: `bad_signature`, from one
    // IPv4 and one IPv6 address (several ports each), over three intervals or so.
    let rng = ring::rand::SystemRandom::new();
    let sources: Vec<(std::net::UdpSocket, SocketAddr)> = [Wifi, Lte6]
        .into_iter()
        .flat_map(|t| (0..3).map(move |_| (SocketAddr::new(t.client_addr().ip(), 0), t.gw_addr())))
        .map(|(from, to)| {
            (
                lab.client_udp(&from.to_string(), Duration::from_millis(1)),
                to,
            )
        })
        .collect();
    for i in 0..HELLOS {
        let (_, mut hello) =
            ClientHandshake::start(&lab.client_id, &lab.gateway_pub, now_ms(), &rng).unwrap();
        let last = hello.len() - 1;
        hello[last] ^= 0x40;
        let (sock, to) = &sources[i % sources.len()];
        // A full socket buffer only loses a HELLO; the metric counts what arrived.
        let _ = sock.send_to(&hello, to);
        if i % 50 == 49 {
            std::thread::sleep(Duration::from_millis(25));
        }
    }
    // The last interval closes at the first tick after its end.
    std::thread::sleep(Duration::from_millis(INTERVAL_MS + 300));
    assert!(lab.gateway_alive(), "gateway died:\n{}", lab.log("gateway"));
    let elapsed = started.elapsed().as_secs_f64();

    let stats = lab.stats();
    let counted = stats
        .security_by_kind
        .get("bad_signature")
        .copied()
        .unwrap_or(0);
    let metrics = lab.metrics();
    assert_eq!(
        metric(
            &metrics,
            "jvpn_security_events_total{kind=\"bad_signature\"}"
        ),
        counted
    );
    assert!(
        counted >= 10,
        "only {counted} bad HELLOs reached the controller"
    );

    // The aggregated stream (the recent ring, as followers see it): exact.
    let (published, suppressed, summaries) = tally(&lab.events(), "bad_signature");
    eprintln!(
        "{HELLOS} bad HELLOs sent, {counted} reached the controller: {published} \
         SECURITY_EVENTs, {} summaries ({suppressed} only counted) in {elapsed:.1}s",
        summaries.len()
    );
    assert_eq!(published + suppressed, counted, "{summaries:?}");
    assert!(!summaries.is_empty(), "no SECURITY_SUMMARY");
    for (prefix, count, s, interval_ms) in &summaries {
        assert!(
            prefix == "10.77.1.0/24" || prefix.ends_with("::/64"),
            "{prefix}"
        );
        assert_eq!(
            (*count, *interval_ms),
            (s + 1, INTERVAL_MS),
            "{summaries:?}"
        );
    }
    assert_eq!(
        metric(
            &metrics,
            "jvpn_events_suppressed_total{reason=\"aggregated\"}"
        ),
        suppressed
    );
    // A handful of events per interval and prefix, not one per HELLO.
    assert!(published <= 2 * (elapsed as u64 * 1000 / INTERVAL_MS + 2));

    // The event log: under both caps, the same events.
    let size = std::fs::metadata(&log).unwrap().len();
    assert!(size <= MAX, "{size} bytes");
    let bound = (RATE as f64 * (1.0 + elapsed)) as u64;
    assert!(
        size <= bound,
        "{size} bytes in {elapsed:.1}s at {RATE} bytes/s"
    );
    let on_disk: Vec<EventRecord> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    let by_type: BTreeMap<&str, usize> = on_disk.iter().fold(BTreeMap::new(), |mut m, e| {
        *m.entry(e.kind()).or_default() += 1;
        m
    });
    eprintln!("event log: {size} bytes, {by_type:?}");
    assert_eq!(
        by_type.get("EVENTS_SUPPRESSED"),
        None,
        "aggregation alone kept the log under its rate"
    );
    assert_eq!(
        tally(&on_disk, "bad_signature"),
        (published, suppressed, summaries)
    );
}
