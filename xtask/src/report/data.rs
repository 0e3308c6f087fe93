//! Reads the benchmark's results JSON (schema 1) into the tables the report and the
//! plots show. A partial run may lack any key or hold null in it, so every figure is
//! an `Option` and nothing here fails: what is missing is shown as missing.

use serde_json::Value;

/// The results schema this renderer understands.
pub const SCHEMA: u64 = 1;

/// The number at `path` (object keys), if it is one.
pub fn num(v: &Value, path: &[&str]) -> Option<f64> {
    path.iter()
        .try_fold(v, |v, key| v.get(key))?
        .as_f64()
        .filter(|x| x.is_finite())
}

/// The string at `path`, if it is one.
pub fn text<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, key| v.get(key))?.as_str()
}

/// A whole, non-negative number (a payload size, a session count).
fn whole(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|x| x.fract() == 0.0 && (0.0..9.0e15).contains(x))
            .map(|x| x as u64)
    })
}

/// A benchmark mode, in the order the report lists them.
pub struct ModeName {
    pub key: &'static str,
    /// The row name in REPORT.md.
    pub name: &'static str,
    /// Two short lines under its bars in the plot.
    pub label: [&'static str; 2],
    /// The results key of its 64-byte, 1,000-session headline figure.
    pub headline: &'static str,
}

pub const MODES: [ModeName; 9] = [
    ModeName {
        key: "drop",
        name: "XDP_DROP (ceiling)",
        label: ["XDP_DROP", "(ceiling)"],
        headline: "drop_pps",
    },
    ModeName {
        key: "fwd",
        name: "XDP redirect forwarder (ceiling)",
        label: ["XDP redirect", "(ceiling)"],
        headline: "fwd_pps",
    },
    ModeName {
        key: "relay_1k",
        name: "jvpn relay, 1k sessions",
        label: ["jvpn relay", "1k sessions"],
        headline: "relay_pps",
    },
    ModeName {
        key: "relay_1m",
        name: "jvpn relay, 1M sessions",
        label: ["jvpn relay", "1M sessions"],
        headline: "relay_1m_pps",
    },
    ModeName {
        key: "relay_1k_fib",
        name: "jvpn relay, 1k sessions, FIB per packet (table suspended)",
        label: ["relay, FIB", "1k sessions"],
        headline: "relay_fib_pps",
    },
    ModeName {
        key: "relay_1m_fib",
        name: "jvpn relay, 1M sessions, FIB per packet (table suspended)",
        label: ["relay, FIB", "1M sessions"],
        headline: "relay_1m_fib_pps",
    },
    ModeName {
        key: "relay_1k_2cpu",
        name: "jvpn relay, 1k sessions, traffic from 2 CPUs (2-queue veth)",
        label: ["jvpn relay", "2 CPUs"],
        headline: "relay_2cpu_pps",
    },
    ModeName {
        key: "userspace_relay",
        name: "userspace relay (recvmmsg/sendmmsg)",
        label: ["userspace relay", "(mmsg)"],
        headline: "userspace_relay_pps",
    },
    ModeName {
        key: "kernel_fwd",
        name: "kernel IP forwarding",
        label: ["kernel IP", "forwarding"],
        headline: "kernel_fwd_pps",
    },
];

/// The payload the headline keys were measured with.
const HEADLINE_PAYLOAD: u64 = 64;

pub struct Payload {
    pub bytes: u64,
    pub frame_bytes: Option<u64>,
}

pub struct ModeRow {
    pub name: String,
    pub label: [String; 2],
    /// Packets per second, one per payload of [`Throughput::payloads`].
    pub pps: Vec<Option<f64>>,
}

/// Packets per second by mode (rows) and payload size (columns).
pub struct Throughput {
    pub payloads: Vec<Payload>,
    pub rows: Vec<ModeRow>,
}

impl Throughput {
    pub fn read(results: &Value) -> Self {
        let entries: &[Value] = results
            .get("pps")
            .and_then(Value::as_array)
            .map_or(&[], Vec::as_slice);
        let entry_payload = |e: &Value| e.get("payload").and_then(whole);

        // Columns: every payload an entry or the setup names, and the headline one
        // when any headline figure exists.
        let mut sizes: Vec<u64> = entries.iter().filter_map(entry_payload).collect();
        if let Some(list) = results.pointer("/setup/payloads").and_then(Value::as_array) {
            sizes.extend(list.iter().filter_map(whole));
        }
        if MODES.iter().any(|m| num(results, &[m.headline]).is_some()) {
            sizes.push(HEADLINE_PAYLOAD);
        }
        sizes.sort_unstable();
        sizes.dedup();
        let payloads = sizes
            .iter()
            .map(|&bytes| Payload {
                bytes,
                frame_bytes: entries
                    .iter()
                    .filter(|e| entry_payload(e) == Some(bytes))
                    .find_map(|e| e.get("frame_bytes").and_then(whole)),
            })
            .collect();

        let lookup = |mode: &str, payload: u64| {
            entries
                .iter()
                .filter(|e| e.get("mode").and_then(Value::as_str) == Some(mode))
                .filter(|e| entry_payload(e) == Some(payload))
                .find_map(|e| num(e, &["pps"]))
        };
        let mut rows: Vec<ModeRow> = MODES
            .iter()
            .map(|m| ModeRow {
                name: m.name.into(),
                label: m.label.map(str::to_owned),
                pps: sizes
                    .iter()
                    .map(|&p| {
                        lookup(m.key, p).or_else(|| {
                            (p == HEADLINE_PAYLOAD)
                                .then(|| num(results, &[m.headline]))
                                .flatten()
                        })
                    })
                    .collect(),
            })
            .collect();
        // A mode this renderer does not know still gets a row, under its own name.
        let mut unknown: Vec<&str> = Vec::new();
        for mode in entries.iter().filter_map(|e| e.get("mode")?.as_str()) {
            if !MODES.iter().any(|m| m.key == mode) && !unknown.contains(&mode) {
                unknown.push(mode);
            }
        }
        rows.extend(unknown.into_iter().map(|mode| ModeRow {
            name: mode.into(),
            label: [mode.into(), String::new()],
            pps: sizes.iter().map(|&p| lookup(mode, p)).collect(),
        }));
        Self { payloads, rows }
    }

    pub fn has_data(&self) -> bool {
        self.rows.iter().flat_map(|r| &r.pps).any(Option::is_some)
    }
}

/// One line of the raw counts behind the throughput table.
pub struct PpsEntry {
    pub mode: String,
    pub payload: Option<u64>,
    pub frame_bytes: Option<u64>,
    pub pps: Option<f64>,
    pub sent: Option<f64>,
    pub received: Option<f64>,
    pub seconds: Option<f64>,
}

pub fn pps_entries(results: &Value) -> Vec<PpsEntry> {
    let Some(entries) = results.get("pps").and_then(Value::as_array) else {
        return Vec::new();
    };
    entries
        .iter()
        .map(|e| PpsEntry {
            mode: text(e, &["mode"]).unwrap_or("?").into(),
            payload: e.get("payload").and_then(whole),
            frame_bytes: e.get("frame_bytes").and_then(whole),
            pps: num(e, &["pps"]),
            sent: num(e, &["sent"]),
            received: num(e, &["received"]),
            seconds: num(e, &["seconds"]),
        })
        .collect()
}

/// Nanoseconds per packet by session-table size, for the relay and for XDP_DROP.
pub struct NsPerPkt {
    /// Ascending.
    pub sessions: Vec<u64>,
    pub relay: Vec<Option<f64>>,
    /// The relay with its next-hop table suspended (the FIB per packet).
    pub relay_fib: Vec<Option<f64>>,
    pub drop: Vec<Option<f64>>,
}

impl NsPerPkt {
    pub fn read(results: &Value) -> Self {
        let series = |name: &str| results.get("ns_per_pkt").and_then(|n| n.get(name));
        let mut sessions: Vec<u64> = ["relay", "drop"]
            .iter()
            .filter_map(|s| series(s)?.as_object())
            .flat_map(|o| o.keys().filter_map(|k| k.parse().ok()))
            .collect();
        sessions.sort_unstable();
        sessions.dedup();
        let values = |name: &str| {
            sessions
                .iter()
                .map(|n| series(name).and_then(|s| num(s, &[&n.to_string()])))
                .collect()
        };
        Self {
            relay: values("relay"),
            relay_fib: values("relay_fib"),
            drop: values("drop"),
            sessions,
        }
    }

    pub fn has_data(&self) -> bool {
        self.relay.iter().chain(&self.drop).any(Option::is_some)
    }
}

/// Reattach round-trip samples and their percentiles.
pub struct Rtt {
    /// Ascending.
    pub samples: Vec<f64>,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
}

impl Rtt {
    /// The percentiles are the benchmark's own when it wrote them, else computed from
    /// the samples.
    pub fn read(results: &Value) -> Self {
        let mut samples: Vec<f64> = results
            .get("reattach_rtt_us")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_f64)
                    .filter(|x| x.is_finite())
                    .collect()
            })
            .unwrap_or_default();
        samples.sort_by(f64::total_cmp);
        Self {
            p50: num(results, &["reattach_rtt_us_p50"]).or_else(|| percentile(&samples, 50.0)),
            p99: num(results, &["reattach_rtt_us_p99"]).or_else(|| percentile(&samples, 99.0)),
            samples,
        }
    }
}

/// The `tunnel` phase: TCP through the jvpn tunnel and through wireguard-go, up
/// (client → exit) and down (exit → client), medians of the rounds.
pub struct Tunnel {
    /// `[up, down]`, Mbit/s.
    pub jvpn: [Option<f64>; 2],
    pub wireguard_go: [Option<f64>; 2],
    /// The senders' TCP retransmits per run, `[up, down]`.
    pub jvpn_retransmits: [Option<f64>; 2],
    pub wireguard_go_retransmits: [Option<f64>; 2],
    /// jvpn / wireguard-go, `[up, down]`.
    pub ratio: [Option<f64>; 2],
}

/// The two directions, as the tunnel keys spell them.
pub const DIRECTIONS: [&str; 2] = ["up", "down"];

impl Tunnel {
    pub fn read(r: &Value) -> Self {
        let per = |f: &dyn Fn(&str) -> String| DIRECTIONS.map(|d| num(r, &[&f(d)]));
        let mbps = per(&|d| format!("tunnel_{d}_mbps"));
        let wg = per(&|d| format!("wireguard_go_{d}_mbps"));
        let ratio = per(&|d| format!("tunnel_over_wireguard_go_{d}"));
        let mut computed = [None; 2];
        for i in 0..2 {
            computed[i] = ratio[i].or_else(|| {
                mbps[i]
                    .zip(wg[i])
                    .filter(|(_, w)| *w > 0.0)
                    .map(|(m, w)| m / w)
            });
        }
        Self {
            jvpn: mbps,
            wireguard_go: wg,
            jvpn_retransmits: per(&|d| format!("tunnel_{d}_retransmits")),
            wireguard_go_retransmits: per(&|d| format!("wireguard_go_{d}_retransmits")),
            ratio: computed,
        }
    }

    pub fn has_data(&self) -> bool {
        self.jvpn
            .iter()
            .chain(&self.wireguard_go)
            .any(Option::is_some)
    }
}

/// The `flood` phase: the legitimate workload on its own and under the flood of
/// spoofed HELLOs and forged REATTACH_REQUESTs. Pairs are `[unloaded, under the flood]`.
pub struct Flood {
    /// The floods' achieved rates (frames the gateway's links accepted per second),
    /// and what was asked for.
    pub hello_pps: Option<f64>,
    pub reattach_pps: Option<f64>,
    pub hello_target: Option<f64>,
    pub reattach_target: Option<f64>,
    /// `default`, or `open` (the gate's limits wide open: the picture without it).
    pub gate: Option<String>,
    /// Per handshake, its time to ESTABLISHED (ms); `None`: none within 2 s.
    pub handshake_ms: [Vec<Option<f64>>; 2],
    /// Fraction of the handshakes done within 2 s.
    pub handshake_success: [Option<f64>; 2],
    pub handshake_ms_p50: [Option<f64>; 2],
    pub handshake_ms_p99: [Option<f64>; 2],
    /// Per reattach, request out → ACK in (µs); `None`: no ACK within 2 s.
    pub reattach_us: [Vec<Option<f64>>; 2],
    pub reattach_us_p50: [Option<f64>; 2],
    pub reattach_us_p99: [Option<f64>; 2],
    /// Reattach p99 under the flood / unloaded.
    pub reattach_p99_ratio: Option<f64>,
    pub spurious_volatile: [Option<f64>; 2],
    pub event_log_bytes_per_s: [Option<f64>; 2],
    /// The gateway process's user + system CPU, in cores.
    pub controller_cpu: [Option<f64>; 2],
    /// HELLO signatures the controller checked, and how many did not verify (the
    /// flood's).
    pub sig_verifications: [Option<f64>; 2],
    pub bad_signatures: [Option<f64>; 2],
    /// The XDP program's counters (drops, and COOKIEs answered) that grew under the
    /// flood, by reason, largest first.
    pub xdp: Vec<(String, f64)>,
    /// The generator's cost per frame (repeat mode), by template: `data`, `hello`,
    /// `reattach`.
    pub generator_ns: Vec<(String, f64)>,
}

/// The two windows' key prefixes: the keys (`legit_…`) and the others
/// (`flood_…`), unloaded then under the flood.
pub const FLOOD_WINDOWS: [(&str, &str); 2] = [("unloaded_", "unloaded_"), ("", "flood_")];

impl Flood {
    pub fn read(r: &Value) -> Self {
        let pair = |key: &str, extra: bool| {
            FLOOD_WINDOWS.map(|(main, other)| {
                let prefix = if extra { other } else { main };
                num(r, &[&format!("{prefix}{key}")])
            })
        };
        let samples = |key: &str| {
            FLOOD_WINDOWS.map(|(prefix, _)| {
                r.get(format!("{prefix}{key}"))
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .map(|v| v.as_f64().filter(|x| x.is_finite()))
                            .collect()
                    })
                    .unwrap_or_default()
            })
        };
        let counts = |key: &str, by_size: bool| {
            let mut v: Vec<(String, f64)> = r
                .get(key)
                .and_then(Value::as_object)
                .map(|o| {
                    o.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_f64()?)))
                        .collect()
                })
                .unwrap_or_default();
            if by_size {
                v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            }
            v
        };
        let p99 = pair("legit_reattach_rtt_us_p99", false);
        Self {
            hello_pps: num(r, &["flood_hello_pps"]),
            reattach_pps: num(r, &["flood_reattach_pps"]),
            hello_target: num(r, &["flood_hello_target_pps"]),
            reattach_target: num(r, &["flood_reattach_target_pps"]),
            gate: text(r, &["flood_gate"]).map(str::to_owned),
            handshake_ms: samples("legit_handshake_ms"),
            handshake_success: pair("legit_handshake_success", false),
            handshake_ms_p50: pair("legit_handshake_ms_p50", false),
            handshake_ms_p99: pair("legit_handshake_ms_p99", false),
            reattach_us: samples("legit_reattach_rtt_us"),
            reattach_us_p50: pair("legit_reattach_rtt_us_p50", false),
            reattach_us_p99: p99,
            reattach_p99_ratio: num(r, &["legit_reattach_p99_over_unloaded"]).or_else(|| {
                let [u, f] = p99;
                f.zip(u).filter(|(_, u)| *u > 0.0).map(|(f, u)| f / u)
            }),
            spurious_volatile: pair("spurious_volatile", false),
            event_log_bytes_per_s: pair("event_log_bytes_per_s", false),
            controller_cpu: pair("controller_cpu", false),
            sig_verifications: pair("controller_hello_sig_verifications", false),
            bad_signatures: pair("controller_hello_bad_signature", true),
            xdp: counts("flood_xdp_drops", true),
            generator_ns: counts("flood_generator_ns_per_frame", false),
        }
    }

    /// Whether the phase left anything to show.
    pub fn has_data(&self) -> bool {
        self.handshake_ms
            .iter()
            .chain(&self.reattach_us)
            .any(|v| !v.is_empty())
    }
}

/// The nearest-rank percentile of ascending `sorted`.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn numbers_are_optional() {
        let v = json!({"a": 1, "b": null, "c": "x", "d": {"e": 2.5}});
        assert_eq!(num(&v, &["a"]), Some(1.0));
        assert_eq!(num(&v, &["b"]), None);
        assert_eq!(num(&v, &["c"]), None);
        assert_eq!(num(&v, &["d", "e"]), Some(2.5));
        assert_eq!(num(&v, &["d", "x"]), None);
        assert_eq!(num(&json!([1]), &["a"]), None);
    }

    #[test]
    fn throughput_table() {
        let v = json!({
            "setup": {"payloads": [1400, 64]},
            "fwd_pps": 4.2e6,
            "pps": [
                {"mode": "drop", "payload": 64, "frame_bytes": 106, "pps": 7.1e6},
                {"mode": "drop", "payload": 1400, "frame_bytes": 1442, "pps": null},
                {"mode": "relay_1k", "payload": 1400, "pps": 1.0e6},
                {"mode": "new<mode>", "payload": 64, "pps": 5.0},
                {"payload": 64, "pps": 1.0},
            ],
        });
        let t = Throughput::read(&v);
        let sizes: Vec<_> = t
            .payloads
            .iter()
            .map(|p| (p.bytes, p.frame_bytes))
            .collect();
        assert_eq!(sizes, [(64, Some(106)), (1400, Some(1442))]);
        assert_eq!(t.rows.len(), MODES.len() + 1);
        assert_eq!(t.rows[0].pps, [Some(7.1e6), None]);
        // The headline key fills the 64-byte cell the array lacks.
        assert_eq!(t.rows[1].pps, [Some(4.2e6), None]);
        assert_eq!(t.rows[2].pps, [None, Some(1.0e6)]);
        assert_eq!(t.rows[MODES.len()].name, "new<mode>");
        assert_eq!(t.rows[MODES.len()].pps, [Some(5.0), None]);
        assert!(t.has_data());

        let empty = Throughput::read(&json!({}));
        assert!(empty.payloads.is_empty());
        assert_eq!(empty.rows.len(), MODES.len());
        assert!(!empty.has_data());
    }

    #[test]
    fn ns_per_pkt_and_rtt() {
        let v = json!({
            "ns_per_pkt": {"relay": {"1000000": 45.0, "1000": 40.1, "bad": 1}, "drop": {"1000": 26.0}},
            "reattach_rtt_us": [5, 1, 4, 2, 3, "x", null],
            "reattach_rtt_us_p99": 4.5,
        });
        let n = NsPerPkt::read(&v);
        assert_eq!(n.sessions, [1000, 1_000_000]);
        assert_eq!(n.relay, [Some(40.1), Some(45.0)]);
        assert_eq!(n.drop, [Some(26.0), None]);
        let r = Rtt::read(&v);
        assert_eq!(r.samples, [1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(r.p50, Some(3.0));
        assert_eq!(r.p99, Some(4.5));
        assert!(!NsPerPkt::read(&json!({"ns_per_pkt": 3})).has_data());
        assert_eq!(Rtt::read(&json!({})).p50, None);
    }

    #[test]
    fn tunnel_figures() {
        let t = Tunnel::read(&json!({
            "tunnel_up_mbps": 2000.0, "tunnel_down_mbps": 1500.0,
            "wireguard_go_up_mbps": 800.0, "wireguard_go_down_mbps": null,
            "tunnel_over_wireguard_go_up": 2.4, "tunnel_up_retransmits": 12,
        }));
        assert_eq!(t.jvpn, [Some(2000.0), Some(1500.0)]);
        assert_eq!(t.wireguard_go, [Some(800.0), None]);
        // The runner's ratio wins; a missing one is not made up.
        assert_eq!(t.ratio, [Some(2.4), None]);
        assert_eq!(t.jvpn_retransmits, [Some(12.0), None]);
        assert!(t.has_data());
        let t = Tunnel::read(&json!({"tunnel_up_mbps": 2000, "wireguard_go_up_mbps": 800}));
        assert_eq!(t.ratio, [Some(2.5), None]);
        assert!(!Tunnel::read(&json!({})).has_data());
    }

    #[test]
    fn flood_figures() {
        let f = Flood::read(&json!({
            "flood_hello_pps": 1.0e6, "flood_gate": "default",
            "legit_handshake_ms": [1.5, null, 3.0], "unloaded_legit_handshake_ms": [1.0],
            "legit_reattach_rtt_us_p99": 3000, "unloaded_legit_reattach_rtt_us_p99": 1000,
            "unloaded_controller_hello_bad_signature": 0,
            "flood_controller_hello_bad_signature": 7,
            "flood_xdp_drops": {"control_limited": 5, "hello_cookie_sent": 9, "x": "y"},
        }));
        assert_eq!(f.hello_pps, Some(1.0e6));
        assert_eq!(f.gate.as_deref(), Some("default"));
        assert_eq!(f.handshake_ms[1], [Some(1.5), None, Some(3.0)]);
        assert_eq!(f.handshake_ms[0], [Some(1.0)]);
        // Derived when the runner did not write it.
        assert_eq!(f.reattach_p99_ratio, Some(3.0));
        assert_eq!(f.bad_signatures, [Some(0.0), Some(7.0)]);
        assert_eq!(
            f.xdp,
            [
                ("hello_cookie_sent".to_string(), 9.0),
                ("control_limited".to_string(), 5.0)
            ]
        );
        assert!(f.has_data());
        assert!(!Flood::read(&json!({})).has_data());
    }

    #[test]
    fn percentiles() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&s, 50.0), Some(50.0));
        assert_eq!(percentile(&s, 99.0), Some(99.0));
        assert_eq!(percentile(&s, 100.0), Some(100.0));
        assert_eq!(percentile(&s, 0.0), Some(1.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
    }
}
