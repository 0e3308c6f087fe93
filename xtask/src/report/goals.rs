//! The benchmark's pass/fail goals. REPORT.md tabulates them and `cargo xtask bench`
//! prints them on the terminal, so both read the same list.

use std::fmt;

use super::{
    data, format,
    schema::{Phase, Results, Status},
};

#[derive(Clone, Copy, PartialEq, Debug)]
enum Cmp {
    AtLeast,
    AtMost,
    Equal,
}

/// One goal: the results key it reads (the JSON's name for the figure: a test checks
/// that `get` reads that key), the phase that measures it, how it must compare, and
/// how to show it.
#[derive(Debug)]
struct Spec {
    key: &'static str,
    phase: Phase,
    get: fn(&Results) -> Option<f64>,
    what: &'static str,
    cmp: Cmp,
    threshold: f64,
    unit: &'static str,
    decimals: usize,
}

const SPECS: [Spec; 20] = [
    Spec {
        key: "relay_over_fwd",
        phase: Phase::Throughput,
        get: |r| r.throughput.as_ref()?.relay_over_fwd,
        what: "relay throughput / plain XDP redirect forwarder",
        cmp: Cmp::AtLeast,
        threshold: 0.85,
        unit: "",
        decimals: 2,
    },
    Spec {
        key: "relay_over_drop",
        phase: Phase::Throughput,
        get: |r| r.throughput.as_ref()?.relay_over_drop,
        what: "relay throughput / XDP_DROP",
        cmp: Cmp::AtLeast,
        threshold: 0.5,
        unit: "",
        decimals: 2,
    },
    Spec {
        key: "relay_over_userspace",
        phase: Phase::Throughput,
        get: |r| r.throughput.as_ref()?.relay_over_userspace,
        what: "relay throughput / userspace relay",
        cmp: Cmp::AtLeast,
        threshold: 5.0,
        unit: "",
        decimals: 2,
    },
    Spec {
        key: "relay_minus_drop_ns",
        phase: Phase::Cost,
        get: |r| Some(r.cost.as_ref()?.relay_minus_drop_ns),
        what: "relay's cost per packet over XDP_DROP (repeat mode)",
        cmp: Cmp::AtMost,
        threshold: 60.0,
        unit: " ns",
        decimals: 1,
    },
    Spec {
        key: "relay_1m_over_1k",
        phase: Phase::Cost,
        get: |r| r.cost.as_ref()?.relay_1m_over_1k,
        what: "relay time per packet, 1M sessions / 1k",
        cmp: Cmp::AtMost,
        threshold: 1.5,
        unit: "",
        decimals: 2,
    },
    Spec {
        key: "relay_1m_over_1k_pps",
        phase: Phase::Throughput,
        get: |r| r.throughput.as_ref()?.relay_1m_over_1k_pps,
        what: "relay throughput, 1M sessions / 1k",
        cmp: Cmp::AtLeast,
        threshold: 0.75,
        unit: "",
        decimals: 2,
    },
    Spec {
        key: "swap_misrouted",
        phase: Phase::Swap,
        get: |r| Some(r.swap.as_ref()?.swap_misrouted as f64),
        what: "packets sent to a stale binding during swaps",
        cmp: Cmp::Equal,
        threshold: 0.0,
        unit: "",
        decimals: 0,
    },
    Spec {
        key: "swap_lost",
        phase: Phase::Swap,
        get: |r| Some(r.swap.as_ref()?.swap_lost as f64),
        what: "packets lost during swaps",
        cmp: Cmp::Equal,
        threshold: 0.0,
        unit: "",
        decimals: 0,
    },
    Spec {
        key: "swap_us_p99",
        phase: Phase::Swap,
        get: |r| Some(r.swap.as_ref()?.swap_us_p99),
        what: "binding swap time, p99",
        cmp: Cmp::AtMost,
        threshold: 50.0,
        unit: " µs",
        decimals: 1,
    },
    Spec {
        key: "reattaches_store_ratio",
        phase: Phase::Controller,
        get: |r| r.controller_store.as_ref()?.reattaches_store_ratio,
        what: "validated reattaches/s, durable store / none",
        cmp: Cmp::AtLeast,
        threshold: 0.8,
        unit: "",
        decimals: 2,
    },
    Spec {
        key: "reattach_rtt_store_extra_us_p99",
        phase: Phase::Reattach,
        get: store_extra_p99,
        what: "reattach round trip p99, store on disk − on a tmpfs",
        cmp: Cmp::AtMost,
        threshold: 2000.0,
        unit: " µs",
        decimals: 0,
    },
    Spec {
        key: "tunnel_over_wireguard_go",
        phase: Phase::Tunnel,
        get: tunnel_lower,
        what: "TCP through the tunnel / through wireguard-go, the lower direction",
        cmp: Cmp::AtLeast,
        threshold: 2.0,
        unit: "",
        decimals: 2,
    },
    // The flood phase (issue 16): first the flood itself, then what it must not do.
    Spec {
        key: "flood_hello_pps",
        phase: Phase::Flood,
        get: |r| Some(r.flood.as_ref()?.flood_hello_pps),
        what: "flood: spoofed-source HELLOs per second sent at the gateway",
        cmp: Cmp::AtLeast,
        threshold: 1_000_000.0,
        unit: "",
        decimals: 0,
    },
    Spec {
        key: "flood_reattach_pps",
        phase: Phase::Flood,
        get: |r| Some(r.flood.as_ref()?.flood_reattach_pps),
        what: "flood: forged REATTACH_REQUESTs per second sent at the gateway",
        cmp: Cmp::AtLeast,
        threshold: 500_000.0,
        unit: "",
        decimals: 0,
    },
    Spec {
        key: "legit_handshake_success",
        phase: Phase::Flood,
        get: |r| Some(r.flood.as_ref()?.under_flood.handshake_success),
        what: "under the flood: legitimate handshakes done within 2 s (fraction)",
        cmp: Cmp::AtLeast,
        threshold: 1.0,
        unit: "",
        decimals: 2,
    },
    Spec {
        key: "legit_reattach_p99_over_unloaded",
        phase: Phase::Flood,
        get: |r| data::Flood::read(r).reattach_p99_ratio,
        what: "under the flood: legitimate reattach round trip p99 / unloaded",
        cmp: Cmp::AtMost,
        threshold: 2.0,
        unit: "",
        decimals: 2,
    },
    Spec {
        key: "spurious_volatile",
        phase: Phase::Flood,
        get: |r| Some(r.flood.as_ref()?.under_flood.spurious_volatile as f64),
        what: "under the flood: healthy sessions that left ATTACHED",
        cmp: Cmp::Equal,
        threshold: 0.0,
        unit: "",
        decimals: 0,
    },
    Spec {
        key: "event_log_bytes_per_s",
        phase: Phase::Flood,
        get: |r| Some(r.flood.as_ref()?.under_flood.event_log_bytes_per_s),
        what: "under the flood: event log growth",
        cmp: Cmp::AtMost,
        threshold: 100_000.0,
        unit: " B/s",
        decimals: 0,
    },
    Spec {
        key: "controller_cpu",
        phase: Phase::Flood,
        get: |r| Some(r.flood.as_ref()?.under_flood.controller_cpu),
        what: "under the flood: the gateway process's CPU",
        cmp: Cmp::AtMost,
        threshold: 1.0,
        unit: " cores",
        decimals: 2,
    },
    Spec {
        key: "flood_controller_hello_bad_signature",
        phase: Phase::Flood,
        get: |r| Some(r.flood.as_ref()?.under_flood.controller_hello_bad_signature as f64),
        what: "under the flood: spoofed HELLOs that reached signature verification",
        cmp: Cmp::Equal,
        threshold: 0.0,
        unit: "",
        decimals: 0,
    },
];

/// The store's extra reattach round trip; results written before the runner computed
/// it still give it from its two measured p99s (same run).
fn store_extra_p99(r: &Results) -> Option<f64> {
    let a = r.reattach.as_ref()?;
    a.reattach_rtt_store_extra_us_p99
        .or_else(|| Some(a.reattach_rtt_us_p99 - a.reattach_rtt_tmpfs_us_p99?))
}

/// The tunnel's lower ratio, or (results written before the runner computed it) the
/// lower of its two directions'.
fn tunnel_lower(r: &Results) -> Option<f64> {
    r.tunnel.as_ref()?.tunnel_over_wireguard_go.or_else(|| {
        let [up, down] = data::Tunnel::read(r).ratio;
        Some(up?.min(down?))
    })
}

/// A goal checked against one run.
#[derive(Debug)]
pub struct Goal {
    /// The results key, e.g. `relay_over_fwd`.
    pub name: &'static str,
    /// e.g. `≥ 0.85`, `≤ 30 ns`, `= 0`.
    pub target: String,
    pub value: Option<f64>,
    /// `None` when the value is missing.
    pub met: Option<bool>,
    /// Why the value is missing: `not run (skipped)`, `not measured (the controller
    /// phase failed)`, …
    missing: String,
    spec: &'static Spec,
}

/// Why a figure of `phase` is missing from `results`.
pub fn missing(results: &Results, phase: Phase) -> String {
    match results.status(phase) {
        Status::Ran => "not measured".into(),
        Status::Failed(_) => format!("not measured (the {} phase failed)", phase.name()),
        Status::Skipped => "not run (skipped)".into(),
        Status::Absent => "not run".into(),
    }
}

/// The goals, in their fixed order, checked against `results`.
pub fn goals(results: &Results) -> Vec<Goal> {
    SPECS
        .iter()
        .map(|spec| {
            let value = (spec.get)(results).filter(|v| v.is_finite());
            let sign = match spec.cmp {
                Cmp::AtLeast => "≥",
                Cmp::AtMost => "≤",
                Cmp::Equal => "=",
            };
            Goal {
                name: spec.key,
                target: format!("{sign} {}{}", spec.threshold, spec.unit),
                value,
                met: value.map(|v| match spec.cmp {
                    Cmp::AtLeast => v >= spec.threshold,
                    Cmp::AtMost => v <= spec.threshold,
                    Cmp::Equal => v == spec.threshold,
                }),
                missing: missing(results, spec.phase),
                spec,
            }
        })
        .collect()
}

impl Goal {
    /// What the goal is about, in words.
    pub fn what(&self) -> &'static str {
        self.spec.what
    }

    /// The measured value with the goal's precision and unit, or "—".
    pub fn measured(&self) -> String {
        match self.value {
            Some(v) => format!("{v:.*}{}", self.spec.decimals, self.spec.unit),
            None => format::MISSING.into(),
        }
    }

    /// `✅ met`, `❌ missed by 0.07`, or `— not measured`/`— not run` with why.
    pub fn verdict(&self) -> String {
        let (Some(met), Some(v)) = (self.met, self.value) else {
            return format!("{} {}", format::MISSING, self.missing);
        };
        if met {
            return "✅ met".into();
        }
        let off = (v - self.spec.threshold).abs();
        let decimals = self.spec.decimals;
        let shown = format!("{off:.decimals$}");
        // A value just past the line would otherwise read "missed by 0.00".
        if shown.trim_start_matches(['0', '.']).is_empty() {
            let least = 10f64.powi(-(decimals as i32));
            format!("❌ missed by < {least:.decimals$}{}", self.spec.unit)
        } else {
            format!("❌ missed by {shown}{}", self.spec.unit)
        }
    }
}

/// One terminal line: `✅ met  relay_over_fwd = 0.93 (goal ≥ 0.85)`.
impl fmt::Display for Goal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}  {} = {} (goal {})",
            self.verdict(),
            self.name,
            self.measured(),
            self.target
        )
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::{
        super::schema::{Results, example},
        *,
    };

    fn goal<'a>(gs: &'a [Goal], name: &str) -> &'a Goal {
        gs.iter().find(|g| g.name == name).unwrap()
    }

    /// The full example with these keys set (or removed, for null) in its JSON.
    fn with(keys: Value) -> Results {
        let mut v = serde_json::to_value(example::results()).unwrap();
        for (k, x) in keys.as_object().unwrap() {
            let obj = v.as_object_mut().unwrap();
            if x.is_null() {
                obj.remove(k);
            } else {
                obj.insert(k.clone(), x.clone());
            }
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn names_and_targets_in_order() {
        let gs = goals(&example::nothing_ran());
        let listed: Vec<(&str, &str)> = gs.iter().map(|g| (g.name, g.target.as_str())).collect();
        assert_eq!(
            listed,
            [
                ("relay_over_fwd", "≥ 0.85"),
                ("relay_over_drop", "≥ 0.5"),
                ("relay_over_userspace", "≥ 5"),
                ("relay_minus_drop_ns", "≤ 60 ns"),
                ("relay_1m_over_1k", "≤ 1.5"),
                ("relay_1m_over_1k_pps", "≥ 0.75"),
                ("swap_misrouted", "= 0"),
                ("swap_lost", "= 0"),
                ("swap_us_p99", "≤ 50 µs"),
                ("reattaches_store_ratio", "≥ 0.8"),
                ("reattach_rtt_store_extra_us_p99", "≤ 2000 µs"),
                ("tunnel_over_wireguard_go", "≥ 2"),
                ("flood_hello_pps", "≥ 1000000"),
                ("flood_reattach_pps", "≥ 500000"),
                ("legit_handshake_success", "≥ 1"),
                ("legit_reattach_p99_over_unloaded", "≤ 2"),
                ("spurious_volatile", "= 0"),
                ("event_log_bytes_per_s", "≤ 100000 B/s"),
                ("controller_cpu", "≤ 1 cores"),
                ("flood_controller_hello_bad_signature", "= 0"),
            ]
        );
        for g in &gs {
            assert_eq!((g.value, g.met), (None, None), "{}", g.name);
            assert_eq!(g.verdict(), "— not run");
            assert_eq!(g.measured(), "—");
        }
    }

    /// A goal's name is the results key its value comes from.
    #[test]
    fn each_goal_reads_the_key_it_names() {
        let r = example::results();
        let v = serde_json::to_value(&r).unwrap();
        for g in goals(&r) {
            assert_eq!(v[g.name].as_f64(), g.value, "{}", g.name);
        }
    }

    #[test]
    fn why_a_goal_is_not_measured() {
        let mut r = example::nothing_ran();
        r.skipped.push(Phase::Tunnel);
        r.errors.insert(Phase::Controller, "etcd".into());
        r.throughput = example::results().throughput;
        r.throughput.as_mut().unwrap().relay_over_userspace = None;
        let gs = goals(&r);
        assert_eq!(
            goal(&gs, "tunnel_over_wireguard_go").verdict(),
            "— not run (skipped)"
        );
        assert_eq!(
            goal(&gs, "reattaches_store_ratio").verdict(),
            "— not measured (the controller phase failed)"
        );
        assert_eq!(
            goal(&gs, "relay_over_userspace").verdict(),
            "— not measured"
        );
        assert_eq!(goal(&gs, "swap_lost").verdict(), "— not run");
    }

    #[test]
    fn boundaries_count_as_met() {
        let gs = goals(&with(json!({
            "relay_over_fwd": 0.85, "relay_over_drop": 0.5, "relay_over_userspace": 5,
            "relay_minus_drop_ns": 60, "relay_1m_over_1k": 1.5, "swap_misrouted": 0,
            "relay_1m_over_1k_pps": 0.75,
            "swap_lost": 0, "swap_us_p99": 50.0, "reattaches_store_ratio": 0.8,
            "reattach_rtt_store_extra_us_p99": 2000, "tunnel_over_wireguard_go": 2.0,
            "flood_hello_pps": 1_000_000, "flood_reattach_pps": 500_000,
            "legit_handshake_success": 1.0, "legit_reattach_p99_over_unloaded": 2.0,
            "spurious_volatile": 0, "event_log_bytes_per_s": 100_000, "controller_cpu": 1.0,
            "flood_controller_hello_bad_signature": 0,
        })));
        for g in &gs {
            assert_eq!(g.met, Some(true), "{}", g.name);
            assert_eq!(g.verdict(), "✅ met");
        }
    }

    #[test]
    fn the_stores_extra_round_trip_comes_from_its_two_p99s() {
        let gs = goals(&with(json!({
            "reattach_rtt_store_extra_us_p99": null,
            "reattach_rtt_us_p99": 2187, "reattach_rtt_tmpfs_us_p99": 408,
        })));
        let g = goal(&gs, "reattach_rtt_store_extra_us_p99");
        assert_eq!((g.value, g.met), (Some(1779.0), Some(true)));
        let gs = goals(&with(json!({
            "reattach_rtt_store_extra_us_p99": null, "reattach_rtt_tmpfs_us_p99": null,
        })));
        let g = goal(&gs, "reattach_rtt_store_extra_us_p99");
        assert_eq!(
            (g.value, g.met),
            (None, None),
            "one p99 alone is not measured"
        );
        // The runner's own figure wins.
        let gs = goals(&with(json!({"reattach_rtt_store_extra_us_p99": 2500,
                               "reattach_rtt_us_p99": 2187, "reattach_rtt_tmpfs_us_p99": 408})));
        assert_eq!(
            goal(&gs, "reattach_rtt_store_extra_us_p99").met,
            Some(false)
        );
    }

    #[test]
    fn the_tunnel_goal_takes_the_lower_direction() {
        let gs = goals(&with(json!({"tunnel_over_wireguard_go": null,
                                    "tunnel_over_wireguard_go_up": 2.6,
                                    "tunnel_over_wireguard_go_down": 1.9})));
        let g = goal(&gs, "tunnel_over_wireguard_go");
        assert_eq!((g.value, g.met), (Some(1.9), Some(false)));
        assert_eq!(g.verdict(), "❌ missed by 0.10");
        let gs = goals(&with(json!({"tunnel_over_wireguard_go": null,
                                    "tunnel_over_wireguard_go_up": null,
                                    "tunnel_over_wireguard_go_down": null,
                                    "tunnel_down_mbps": 2000, "wireguard_go_down_mbps": 0})));
        let g = goal(&gs, "tunnel_over_wireguard_go");
        assert_eq!(
            (g.value, g.met),
            (None, None),
            "one direction alone is not measured"
        );
    }

    #[test]
    fn the_flood_reattach_ratio_comes_from_its_two_p99s() {
        let gs = goals(&with(json!({"legit_reattach_p99_over_unloaded": null,
                                    "legit_reattach_rtt_us_p99": 5000,
                                    "unloaded_legit_reattach_rtt_us_p99": 2000})));
        let g = goal(&gs, "legit_reattach_p99_over_unloaded");
        assert_eq!((g.value, g.met), (Some(2.5), Some(false)));
        assert_eq!(g.verdict(), "❌ missed by 0.50");
        let gs = goals(&with(
            json!({"controller_cpu": 0.104, "event_log_bytes_per_s": 68743.0}),
        ));
        assert_eq!(goal(&gs, "controller_cpu").measured(), "0.10 cores");
        assert_eq!(goal(&gs, "event_log_bytes_per_s").measured(), "68743 B/s");
    }

    #[test]
    fn misses_say_by_how_much() {
        let gs = goals(&with(json!({
            "relay_over_fwd": 0.78, "relay_over_drop": 0.4999, "relay_over_userspace": 9.75,
            "relay_minus_drop_ns": 60.04, "relay_1m_over_1k": 1.62, "swap_misrouted": 3,
            "relay_1m_over_1k_pps": null,
        })));
        let g = |n| goal(&gs, n);
        assert_eq!(g("relay_over_fwd").met, Some(false));
        assert_eq!(g("relay_over_fwd").verdict(), "❌ missed by 0.07");
        assert_eq!(g("relay_over_drop").verdict(), "❌ missed by < 0.01");
        assert_eq!(g("relay_over_userspace").verdict(), "✅ met");
        assert_eq!(g("relay_minus_drop_ns").verdict(), "❌ missed by < 0.1 ns");
        assert_eq!(g("relay_minus_drop_ns").measured(), "60.0 ns");
        assert_eq!(g("relay_1m_over_1k").verdict(), "❌ missed by 0.12");
        assert_eq!(g("swap_misrouted").verdict(), "❌ missed by 3");
        assert_eq!(g("swap_misrouted").measured(), "3");
        let pps = g("relay_1m_over_1k_pps");
        assert_eq!((pps.value, pps.met), (None, None));
        assert_eq!(pps.verdict(), "— not measured");
        assert_eq!(
            g("relay_over_fwd").to_string(),
            "❌ missed by 0.07  relay_over_fwd = 0.78 (goal ≥ 0.85)"
        );
    }
}
