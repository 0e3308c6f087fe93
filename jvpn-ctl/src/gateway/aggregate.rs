//! Bounded security events: a flood of refused messages must not become a flood of
//! events (docs/gateway.md, "Events").
//!
//! Security events are aggregated per key — (kind, source prefix: IPv4 /24, IPv6
//! /64) — per interval. The first event of a key in an interval is published as it
//! is, with its full source; the others are only counted. When the interval ends,
//! every key with events that were only counted publishes one `SECURITY_SUMMARY`.
//! The table is bounded: once it holds [`MAX_KEYS`] keys, the events of further keys
//! are folded into their kind's overflow key (prefix `*`), counted and never
//! published one by one.
//!
//! Why these prefixes: one host (or one NAT) moving between ports, or a spoofer
//! walking the last octet, stays one key, while sources of different networks stay
//! apart — an IPv6 /64 is what one subscriber line gets; the IPv4 /24 is the smallest
//! routed block.
//!
//! Pure: time comes in as `now_ms`; the interval opens at the first event after the
//! last one closed and closes at the first call (a tick, or the next event) at or
//! after `interval_ms` later. Summaries come out in key order, so the same inputs give
//! the same outputs.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::control::api::{EventRecord, SessionId};

/// Default aggregation interval.
pub const DEFAULT_INTERVAL_MS: u64 = 1_000;
/// Keys (kind, prefix) per interval beyond which events fold into the overflow keys.
pub const MAX_KEYS: usize = 4_096;
/// The `prefix` of a kind's overflow key.
pub const OVERFLOW_PREFIX: &str = "*";

/// The source prefix a security event is aggregated under: IPv4 /24, IPv6 /64 (an
/// IPv4-mapped IPv6 address counts as the IPv4 address).
pub fn prefix_of(ip: IpAddr) -> IpNet {
    match ip.to_canonical() {
        IpAddr::V4(a) => IpNet::V4(Ipv4Net::new(a, 24).expect("24 ≤ 32").trunc()),
        IpAddr::V6(a) => IpNet::V6(Ipv6Net::new(a, 64).expect("64 ≤ 128").trunc()),
    }
}

/// The sessions a key's events were for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sessions {
    /// All for this one (`None`: none, e.g. HELLOs).
    One(Option<u64>),
    Mixed,
}

impl Sessions {
    fn add(self, id: Option<u64>) -> Self {
        match self {
            Sessions::One(s) if s == id => self,
            _ => Sessions::Mixed,
        }
    }

    fn id(self) -> Option<SessionId> {
        match self {
            Sessions::One(s) => s.map(SessionId),
            Sessions::Mixed => None,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Tally {
    count: u64,
    suppressed: u64,
    sessions: Sessions,
}

impl Tally {
    fn new(session: Option<u64>, published: bool) -> Self {
        Self {
            count: 1,
            suppressed: u64::from(!published),
            sessions: Sessions::One(session),
        }
    }

    fn add(&mut self, session: Option<u64>) {
        self.count += 1;
        self.suppressed += 1;
        self.sessions = self.sessions.add(session);
    }
}

#[derive(Default)]
struct KindTable {
    prefixes: BTreeMap<IpNet, Tally>,
    overflow: Option<Tally>,
}

/// The aggregation table of the current interval (module docs).
pub struct SecurityAggregator {
    interval_ms: u64,
    max_keys: usize,
    /// When the current interval opened (`None`: no event since the last closed).
    since_ms: Option<u64>,
    /// By kind; the kinds are the controller's own names, a small fixed set.
    kinds: BTreeMap<String, KindTable>,
    /// Prefix keys in `kinds` (the overflow keys are not counted: one per kind).
    keys: usize,
    /// Events only counted, since the start.
    suppressed: u64,
}

impl SecurityAggregator {
    /// `interval_ms` ≥ 1, `max_keys` ≥ 1 (smaller values are raised to 1).
    pub fn new(interval_ms: u64, max_keys: usize) -> Self {
        Self {
            interval_ms: interval_ms.max(1),
            max_keys: max_keys.max(1),
            since_ms: None,
            kinds: BTreeMap::new(),
            keys: 0,
            suppressed: 0,
        }
    }

    pub fn interval_ms(&self) -> u64 {
        self.interval_ms
    }

    /// A new interval length, from the next interval on.
    pub fn set_interval_ms(&mut self, interval_ms: u64) {
        self.interval_ms = interval_ms.max(1);
    }

    /// Events only counted (not published on their own) since the start; each is in
    /// the `suppressed` of a summary once its interval has closed.
    pub fn suppressed(&self) -> u64 {
        self.suppressed
    }

    /// Prefix keys in the current interval (at most [`MAX_KEYS`], or the bound given).
    pub fn keys(&self) -> usize {
        self.keys
    }

    /// One security event. First closes an interval that has ended (its summaries go
    /// to `out`); then pushes the event to `out` if it is the first of its key in this
    /// interval, else counts it. Returns whether the event was published.
    pub fn note(
        &mut self,
        kind: &str,
        source: SocketAddr,
        session: Option<u64>,
        now_ms: u64,
        out: &mut Vec<EventRecord>,
    ) -> bool {
        self.tick(now_ms, out);
        self.since_ms.get_or_insert(now_ms);
        let prefix = prefix_of(source.ip());
        let full = self.keys >= self.max_keys;
        let table = match self.kinds.get_mut(kind) {
            Some(t) => t,
            None => self.kinds.entry(kind.to_owned()).or_default(),
        };
        let published = if let Some(t) = table.prefixes.get_mut(&prefix) {
            t.add(session);
            false
        } else if !full {
            table.prefixes.insert(prefix, Tally::new(session, true));
            self.keys += 1;
            true
        } else {
            match &mut table.overflow {
                Some(t) => t.add(session),
                None => table.overflow = Some(Tally::new(session, false)),
            }
            false
        };
        if published {
            out.push(EventRecord::SecurityEvent {
                ts_ms: now_ms,
                session_id: session.map(SessionId),
                source: source.to_string(),
                kind: kind.to_owned(),
            });
        } else {
            self.suppressed += 1;
        }
        published
    }

    /// Closes the current interval if it has ended: one `SECURITY_SUMMARY` per key
    /// with events only counted goes to `out` (in kind, then prefix order, each kind's
    /// overflow key last). Call it from the controller's tick.
    pub fn tick(&mut self, now_ms: u64, out: &mut Vec<EventRecord>) {
        let Some(since) = self.since_ms else {
            return;
        };
        if now_ms < since.saturating_add(self.interval_ms) {
            return;
        }
        let interval_ms = self.interval_ms;
        let summary = |kind: &str, prefix: String, t: &Tally| EventRecord::SecuritySummary {
            ts_ms: now_ms,
            kind: kind.to_owned(),
            prefix,
            count: t.count,
            suppressed: t.suppressed,
            interval_ms,
            session_id: t.sessions.id(),
        };
        for (kind, table) in std::mem::take(&mut self.kinds) {
            for (prefix, t) in &table.prefixes {
                if t.suppressed > 0 {
                    out.push(summary(&kind, prefix.to_string(), t));
                }
            }
            if let Some(t) = &table.overflow {
                out.push(summary(&kind, OVERFLOW_PREFIX.to_owned(), t));
            }
        }
        self.keys = 0;
        self.since_ms = None;
    }
}

impl Default for SecurityAggregator {
    fn default() -> Self {
        Self::new(DEFAULT_INTERVAL_MS, MAX_KEYS)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn summaries(out: &[EventRecord]) -> Vec<(String, String, u64, u64, Option<u64>)> {
        out.iter()
            .filter_map(|e| match e {
                EventRecord::SecuritySummary {
                    kind,
                    prefix,
                    count,
                    suppressed,
                    interval_ms,
                    session_id,
                    ..
                } => {
                    assert_eq!(*interval_ms, 1_000);
                    Some((
                        kind.clone(),
                        prefix.clone(),
                        *count,
                        *suppressed,
                        session_id.map(|s| s.0),
                    ))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn prefixes() {
        let p = |s: &str| prefix_of(s.parse().unwrap()).to_string();
        assert_eq!(p("10.77.2.200"), "10.77.2.0/24");
        assert_eq!(p("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::/64");
        assert_eq!(p("::ffff:192.0.2.77"), "192.0.2.0/24");
    }

    #[test]
    fn first_event_published_the_rest_counted_then_summarised() {
        let mut a = SecurityAggregator::default();
        let mut out = Vec::new();
        // Three ports of one host, another host of its /24, one of another /24.
        assert!(a.note(
            "bad_signature",
            addr("10.77.2.2:40000"),
            None,
            100,
            &mut out
        ));
        assert!(!a.note(
            "bad_signature",
            addr("10.77.2.2:40001"),
            None,
            200,
            &mut out
        ));
        assert!(!a.note("bad_signature", addr("10.77.2.9:1"), None, 300, &mut out));
        assert!(a.note("bad_signature", addr("10.77.3.2:1"), None, 400, &mut out));
        // Another kind from the same prefix is another key.
        assert!(a.note("unknown_peer", addr("10.77.2.2:40000"), None, 500, &mut out));
        assert_eq!(out.len(), 3);
        assert_eq!(
            out[0],
            EventRecord::SecurityEvent {
                ts_ms: 100,
                session_id: None,
                source: "10.77.2.2:40000".into(),
                kind: "bad_signature".into(),
            }
        );
        assert_eq!(a.suppressed(), 2);
        // Not yet: the interval opened at 100.
        a.tick(1_099, &mut out);
        assert_eq!(out.len(), 3);
        a.tick(1_100, &mut out);
        assert_eq!(
            summaries(&out),
            [(
                "bad_signature".to_owned(),
                "10.77.2.0/24".to_owned(),
                3,
                2,
                None
            )],
            "only keys with suppressed events are summarised"
        );
        assert_eq!(
            serde_json::to_string(&out[3]).unwrap(),
            r#"{"type":"SECURITY_SUMMARY","ts_ms":1100,"kind":"bad_signature","prefix":"10.77.2.0/24","count":3,"suppressed":2,"interval_ms":1000,"session_id":null}"#
        );
        // A new interval: the first event is published again.
        out.clear();
        assert!(a.note(
            "bad_signature",
            addr("10.77.2.2:40000"),
            None,
            1_150,
            &mut out
        ));
        assert_eq!(a.keys(), 1);
    }

    #[test]
    fn an_ended_interval_closes_before_the_next_event() {
        let mut a = SecurityAggregator::default();
        let mut out = Vec::new();
        a.note("replay", addr("[2001:db8::1]:9"), Some(7), 0, &mut out);
        a.note("replay", addr("[2001:db8::2]:9"), Some(7), 10, &mut out);
        // No tick in between: the summary still comes first, then the new event.
        a.note("replay", addr("[2001:db8::3]:9"), Some(8), 1_000, &mut out);
        assert_eq!(out.len(), 3);
        assert_eq!(
            summaries(&out[1..2]),
            [(
                "replay".to_owned(),
                "2001:db8::/64".to_owned(),
                2,
                1,
                Some(7)
            )]
        );
        assert!(matches!(
            &out[2],
            EventRecord::SecurityEvent { ts_ms: 1_000, .. }
        ));
    }

    #[test]
    fn a_summary_names_the_session_only_if_all_were_for_it() {
        let mut a = SecurityAggregator::default();
        let mut out = Vec::new();
        for (i, id) in [Some(1), Some(1), Some(2)].into_iter().enumerate() {
            a.note("proof_invalid", addr("192.0.2.1:1"), id, i as u64, &mut out);
        }
        for id in [Some(3), None] {
            a.note("replay", addr("192.0.2.1:1"), id, 5, &mut out);
        }
        a.tick(2_000, &mut out);
        let s = summaries(&out);
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].0.as_str(), s[0].4), ("proof_invalid", None));
        assert_eq!((s[1].0.as_str(), s[1].4), ("replay", None));
    }

    #[test]
    fn the_table_is_bounded_and_overflow_is_counted() {
        let mut a = SecurityAggregator::new(1_000, 2);
        let mut out = Vec::new();
        for i in 0..5u8 {
            a.note(
                "bad_signature",
                addr(&format!("10.0.{i}.1:1")),
                None,
                0,
                &mut out,
            );
        }
        a.note("unknown_peer", addr("10.0.0.1:1"), None, 0, &mut out);
        assert_eq!(a.keys(), 2);
        assert_eq!(out.len(), 2);
        a.tick(1_000, &mut out);
        assert_eq!(
            summaries(&out),
            [
                ("bad_signature".to_owned(), "*".to_owned(), 3, 3, None),
                ("unknown_peer".to_owned(), "*".to_owned(), 1, 1, None),
            ]
        );
    }

    /// A deterministic xorshift: the same "random" flood on every run.
    fn xorshift(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    fn flood(seed: u64) -> (Vec<EventRecord>, u64) {
        let mut a = SecurityAggregator::default();
        let mut out = Vec::new();
        let mut rng = seed;
        let n = 100_000u64;
        let mut next_tick = 50;
        for i in 0..n {
            // Over one second, ticked every 50 ms as the controller does.
            let now = i * 1_000 / n;
            while now >= next_tick {
                a.tick(next_tick, &mut out);
                next_tick += 50;
            }
            let r = xorshift(&mut rng);
            let kind = ["bad_signature", "unknown_peer", "replay"][(r % 3) as usize];
            // A third from one hot /24 and one /64, the rest from anywhere.
            let src = match (r >> 8) % 6 {
                0 => SocketAddr::from(([10, 77, 2, (r >> 16) as u8], 40_000)),
                1 => format!("[2001:db8::{:x}]:1", (r >> 16) as u16)
                    .parse()
                    .unwrap(),
                _ => SocketAddr::from((((r >> 24) as u32).to_be_bytes(), (r >> 56) as u16)),
            };
            a.note(kind, src, None, now, &mut out);
            assert!(a.keys() <= MAX_KEYS);
        }
        for t in [1_000, 1_050, 2_100] {
            a.tick(t, &mut out);
        }
        assert_eq!(a.keys(), 0);
        (out, n)
    }

    #[test]
    fn a_flood_from_random_sources_is_bounded_and_adds_up_exactly() {
        let (out, n) = flood(0x9e37_79b9_7f4a_7c15);
        // Bounded: at most MAX_KEYS events and as many summaries (plus one overflow
        // summary per kind) per interval; the flood's second is one or two intervals.
        let bound = 2 * (2 * MAX_KEYS + 3);
        assert!(out.len() <= bound, "{} events for {n}", out.len());
        assert!(out.len() < (n / 10) as usize, "{}", out.len());
        // Exact: per kind, the published events plus the suppressed of the summaries
        // are every event; a summary's count is its suppressed plus the one published
        // (none for the overflow key).
        let mut published: HashMap<&str, u64> = HashMap::new();
        let mut suppressed: HashMap<&str, u64> = HashMap::new();
        let mut overflow = 0;
        for e in &out {
            match e {
                EventRecord::SecurityEvent { kind, .. } => {
                    *published.entry(kind).or_default() += 1;
                }
                EventRecord::SecuritySummary {
                    kind,
                    prefix,
                    count,
                    suppressed: s,
                    ..
                } => {
                    *suppressed.entry(kind).or_default() += s;
                    if prefix == OVERFLOW_PREFIX {
                        overflow += s;
                        assert_eq!(count, s);
                    } else {
                        assert_eq!(*count, s + 1);
                    }
                }
                other => panic!("{other:?}"),
            }
        }
        let total: u64 = published.values().chain(suppressed.values()).sum();
        assert_eq!(total, n);
        assert_eq!(published.len(), 3);
        assert!(overflow > 0, "the table filled up");
        eprintln!(
            "{n} events → {} published ({} SECURITY_EVENT, {} folded into '*')",
            out.len(),
            published.values().sum::<u64>(),
            overflow
        );
        // Deterministic.
        assert_eq!(flood(0x9e37_79b9_7f4a_7c15).0, out);
    }
}
