//! The gateway's figures (`jvpn-ctl stats`) as Prometheus families, encoded by
//! `prometheus-client` from a typed [`Stats`] snapshot (a [`Collector`]: the core
//! keeps its own counters, so each scrape encodes what it answers). Every state,
//! reattach outcome and known kind is always present (0 if absent), so series do not
//! appear and vanish. Counter names are registered without `_total`; the encoder
//! appends it.

use std::collections::BTreeMap;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};

use crate::{
    control::api::{ClusterStats, OWNERSHIP_KINDS, SECURITY_KINDS, SUPPRESSED_REASONS, Stats},
    session::{Detail, State},
};

/// One scrape's figures.
#[derive(Debug)]
pub(super) struct Figures(pub Stats);

impl Collector for Figures {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut out = Out {
            e: &mut e,
            result: Ok(()),
        };
        encode(&self.0, &mut out);
        out.result
    }
}

/// The encoder and the first error it gave (after which nothing more is written).
pub(super) struct Out<'a, 'b> {
    e: &'a mut DescriptorEncoder<'b>,
    result: Result<(), std::fmt::Error>,
}

impl Out<'_, '_> {
    fn family(
        &mut self,
        name: &str,
        help: &str,
        kind: &str,
        label: &str,
        samples: &[(String, u64)],
    ) {
        if self.result.is_ok() {
            self.result = self.try_family(name, help, kind, Some(label), samples);
        }
    }

    fn scalar(&mut self, name: &str, help: &str, kind: &str, n: u64) {
        if self.result.is_ok() {
            self.result = self.try_family(name, help, kind, None, &[(String::new(), n)]);
        }
    }

    fn try_family(
        &mut self,
        name: &str,
        help: &str,
        kind: &str,
        label: Option<&str>,
        samples: &[(String, u64)],
    ) -> Result<(), std::fmt::Error> {
        let (ty, name) = if kind == "counter" {
            (
                MetricType::Counter,
                name.strip_suffix("_total").unwrap_or(name),
            )
        } else {
            (MetricType::Gauge, name)
        };
        let mut m = self.e.encode_descriptor(name, help, None, ty)?;
        for (value, n) in samples {
            match label {
                Some(label) => {
                    let labels = [(label, value.as_str())];
                    let s = m.encode_family(&labels)?;
                    if ty == MetricType::Counter {
                        ConstCounter::new(*n).encode(s)?;
                    } else {
                        ConstGauge::new(*n).encode(s)?;
                    }
                }
                None if ty == MetricType::Counter => return ConstCounter::new(*n).encode(m),
                None => return ConstGauge::new(*n).encode(m),
            }
        }
        Ok(())
    }
}

fn encode(stats: &Stats, out: &mut Out<'_, '_>) {
    let states: Vec<&str> = State::ALL.iter().map(|s| s.name()).collect();
    let outcomes: Vec<&str> = std::iter::once("success")
        .chain(Detail::ALL.iter().map(|d| d.name()))
        .collect();
    let pairs = |map: &BTreeMap<String, u64>| -> Vec<(String, u64)> {
        map.iter().map(|(k, n)| (k.clone(), *n)).collect()
    };

    out.family(
        "jvpn_sessions",
        "Current sessions by state.",
        "gauge",
        "state",
        &with_all(&stats.sessions_by_state, &states),
    );
    out.family(
        "jvpn_reattach_total",
        "Reattach attempts by outcome: success or the refusal detail.",
        "counter",
        "outcome",
        &with_all(&stats.reattach, &outcomes),
    );
    out.family(
        "jvpn_handshakes_total",
        "Handshakes by result.",
        "counter",
        "result",
        &pairs(&stats.handshakes),
    );
    out.family(
        "jvpn_xdp_drops_total",
        "Packets dropped by the XDP data plane, by reason.",
        "counter",
        "reason",
        &pairs(&stats.xdp_drops),
    );
    out.family(
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
    out.family(
        "jvpn_xdp_slow_path_total",
        "DATA the XDP data plane relayed by a slower path: no valid next-hop table \
         entry, so the kernel's FIB was asked (next_hop_fib); no valid copy of the \
         session's entry in its slot, so SESSIONS was looked up (session_lookup).",
        "counter",
        "reason",
        &with_all(&stats.xdp_slow_path, &["next_hop_fib", "session_lookup"]),
    );
    out.family(
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
    out.family(
        "jvpn_malformed_total",
        "Malformed control messages, by message type.",
        "counter",
        "type",
        &pairs(&stats.malformed),
    );
    let directions = |up: u64, down: u64| vec![("up".to_owned(), up), ("down".to_owned(), down)];
    out.family(
        "jvpn_packets_total",
        "Data packets relayed, by direction (up: client to exit).",
        "counter",
        "direction",
        &directions(stats.up_packets, stats.down_packets),
    );
    out.family(
        "jvpn_bytes_total",
        "Data bytes relayed, by direction (up: client to exit).",
        "counter",
        "direction",
        &directions(stats.up_bytes, stats.down_bytes),
    );
    out.family(
        "jvpn_security_events_total",
        "Security events by kind (invalid proofs, replays, stale requests, unknown peers, \
         ...), every one, published or only counted in a SECURITY_SUMMARY.",
        "counter",
        "kind",
        &with_all(&stats.security_by_kind, &SECURITY_KINDS),
    );
    out.scalar(
        "jvpn_events_total",
        "Events emitted.",
        "counter",
        stats.events_emitted,
    );
    out.scalar(
        "jvpn_events_dropped_total",
        "Events lost: event log full or failing, followers that fell behind.",
        "counter",
        stats.events_dropped,
    );
    out.family(
        "jvpn_events_suppressed_total",
        "Events left out on purpose, by reason: aggregated (security events only counted, \
         in a SECURITY_SUMMARY), rate (event log lines over its byte rate, in an \
         EVENTS_SUPPRESSED line).",
        "counter",
        "reason",
        &with_all(&stats.events_suppressed, &SUPPRESSED_REASONS),
    );
    out.scalar(
        "jvpn_event_log_rotations_total",
        "Times the event log reached event_log_max_bytes and was renamed to <file>.1.",
        "counter",
        stats.event_log_rotations,
    );
    out.scalar(
        "jvpn_uptime_seconds",
        "Seconds since the gateway started.",
        "gauge",
        stats.uptime_s,
    );
    if let Some(h) = &stats.next_hops {
        out.family(
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
        out.scalar(
            "jvpn_next_hop_resyncs_total",
            "Times the next-hop table resolved every destination again (a link, address \
             or route changed, or notifications were lost).",
            "counter",
            h.resyncs,
        );
    }
    if let Some(c) = &stats.cluster {
        cluster(out, c);
    }
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
fn cluster(out: &mut Out<'_, '_>, c: &ClusterStats) {
    out.family(
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
    out.family(
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
    out.scalar(
        "jvpn_cluster_lease_live",
        "1 while this node's lease is live by its own deadline (it may change bindings \
         and take sessions over), else 0.",
        "gauge",
        u64::from(c.lease_live),
    );
    out.scalar(
        "jvpn_cluster_node",
        "This node's number in the cluster.",
        "gauge",
        u64::from(c.node),
    );
}
