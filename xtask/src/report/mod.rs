//! The benchmark report: `cargo xtask bench` writes its results as JSON (schema 1) and
//! this turns them into `REPORT.md` with five SVG plots beside it. The plots are
//! hand-written SVG rather than a plotting crate's, to keep xtask quick to compile.
//! A partial run (a phase failed or was skipped) still renders: whatever is missing
//! shows as "—", and a plot without data says so.

mod data;
mod format;
mod goals;
mod markdown;
mod plots;
mod svg;
#[cfg(test)]
mod xml_check;

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

// `Goal` is named by the caller, bench.rs, which is not written yet.
pub use format::civil;
pub use goals::goals;

/// The plots' directory under the output directory, as REPORT.md links it.
const PLOTS: &str = "plots";

/// Writes `out_dir/REPORT.md` and
/// `out_dir/plots/{pps,ns_per_pkt,reattach_rtt,tunnel,flood}.svg`
/// from a results JSON; `json_name` is how REPORT.md refers to the JSON file (a path
/// relative to `out_dir`). Returns the files written.
pub fn render(results: &Value, json_name: &str, out_dir: &Path) -> Result<Vec<PathBuf>> {
    // A later schema may mean something else by the same keys; missing is fine.
    if let Some(schema) = results.get("schema").filter(|s| !s.is_null())
        && schema.as_u64() != Some(data::SCHEMA)
    {
        bail!(
            "results schema {schema}, but this report renders schema {}",
            data::SCHEMA
        );
    }
    let plots = out_dir.join(PLOTS);
    fs::create_dir_all(&plots).with_context(|| format!("creating {}", plots.display()))?;
    let files = [
        (
            out_dir.join("REPORT.md"),
            markdown::report(results, json_name),
        ),
        (
            plots.join("pps.svg"),
            plots::pps(&data::Throughput::read(results)),
        ),
        (
            plots.join("ns_per_pkt.svg"),
            plots::ns_per_pkt(&data::NsPerPkt::read(results)),
        ),
        (
            plots.join("reattach_rtt.svg"),
            plots::reattach_rtt(&data::Rtt::read(results)),
        ),
        (
            plots.join("tunnel.svg"),
            plots::tunnel(&data::Tunnel::read(results)),
        ),
        (
            plots.join("flood.svg"),
            plots::flood(&data::Flood::read(results)),
        ),
    ];
    files
        .into_iter()
        .map(|(path, text)| {
            fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            Ok(path)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::{AtomicU32, Ordering},
        time::{SystemTime, UNIX_EPOCH},
    };

    use serde_json::json;

    use super::*;

    /// A fresh directory under the system temp dir, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static N: AtomicU32 = AtomicU32::new(0);
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let dir = std::env::temp_dir().join(format!(
                "xtask-report-{}-{nanos}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            fs::create_dir(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// The example of the task description, with a full `pps` array and RTT samples.
    fn example() -> Value {
        let modes = [
            ("drop", 7.1e6, 2.0e6),
            ("fwd", 4.2e6, 1.9e6),
            ("relay_1k", 3.9e6, 1.8e6),
            ("relay_1m", 3.7e6, 1.7e6),
            ("relay_1k_fib", 2.9e6, 1.6e6),
            ("relay_1m_fib", 2.1e6, 1.5e6),
            ("relay_1k_2cpu", 7.0e6, 3.0e6),
            ("userspace_relay", 0.4e6, 0.35e6),
            ("kernel_fwd", 0.9e6, 0.8e6),
        ];
        let pps: Vec<Value> = modes
            .iter()
            .flat_map(|&(mode, small, large)| {
                [(64, 106, small), (1400, 1442, large)].map(|(payload, frame, pps)| {
                    json!({"mode": mode, "payload": payload, "frame_bytes": frame, "pps": pps,
                           "sent": pps * 5.0, "received": pps * 5.0, "seconds": 5.0})
                })
            })
            .collect();
        // A deterministic long-tailed spread: p50 480 µs, p99 about 900 µs.
        let rtt: Vec<f64> = (0..2000u32)
            .map(|i| {
                let u = (f64::from(i * 7919 % 2000) + 0.5) / 2000.0;
                let tail = ((1.0 - u).powf(-0.25) - 1.0) / (2f64.powf(0.25) - 1.0);
                (440.0 + 40.0 * tail).round()
            })
            .collect();
        let v = json!({
            "schema": 1, "quick": false, "started_unix": 1_795_000_000, "seconds": 512.3,
            "machine": {"cpu_model": "AMD EPYC 7B13", "cores": 2, "kernel": "6.18.0",
                        "memory_bytes": 25_769_803_776_u64},
            "setup": {"generator_cpus": [0], "phase_seconds": 5.0, "rounds": 3,
                      "family": "ipv4", "payloads": [64, 1400]},
            "drop_pps": 7.1e6, "fwd_pps": 4.2e6, "relay_pps": 3.9e6, "relay_1m_pps": 3.7e6,
            "relay_fib_pps": 2.9e6, "relay_1m_fib_pps": 2.1e6, "relay_2cpu_pps": 7.0e6, "relay_1m_over_1k_pps": 0.95,
            "userspace_relay_pps": 0.4e6, "kernel_fwd_pps": 0.9e6,
            "relay_over_drop": 0.55, "relay_over_fwd": 0.93, "relay_over_userspace": 9.75,
            "pps": pps,
            "ns_per_pkt": {"relay": {"1000": 40.1, "65536": 41.0, "1000000": 45.0},
                           "relay_fib": {"1000": 140.1, "65536": 141.0, "1000000": 145.0},
                           "drop": {"1000": 26.0, "65536": 26.1, "1000000": 26.0}},
            "relay_minus_drop_ns": 14.1, "relay_1m_over_1k": 1.12,
            "swap_us_p50": 2.1, "swap_us_p99": 6.3, "swap_us_max": 40.0, "swaps": 10000,
            "swap_misrouted": 0, "swap_crossed": 12_345, "swap_cpu": 1,
            "swap_lost": 0, "swap_sent": 2_000_000,
            "swap_received": 2_000_000,
            "handshakes_per_s": 5400, "reattaches_per_s": 9800,
            "reattach_rtt_us_p50": 480, "reattach_rtt_us_p99": 900, "reattach_rtt_us": rtt,
            "bytes_per_session_kernel": 420.0, "bytes_per_session_ctl": 1100.0,
        });
        // The store figures (a second literal: one would exceed json!'s recursion).
        let store = json!({
            "store_sessions": 100000, "handshakes_per_s_nostore": 9000,
            "handshakes_per_s_store": 7650, "handshakes_store_ratio": 0.85,
            "reattaches_per_s_nostore": 230000, "reattaches_per_s_store": 25300,
            "reattaches_store_ratio": 0.11, "restart_ms": 646.7,
            "store_bytes_per_session": 705, "reattach_rtt_tmpfs_us_p50": 400,
            "reattach_rtt_tmpfs_us_p99": 700, "handshakes_per_s_etcd": 7400,
            "reattaches_per_s_etcd": 22600, "restart_ms_etcd": 215.9,
        });
        // The cluster figures.
        let cluster = json!({
            "handshakes_per_s_cluster": 4000, "reattaches_per_s_cluster": 4500,
            "etcd_txns_per_handshake": 1.0, "etcd_txns_per_reattach": 2.0,
            "etcd_rpcs_per_reattach": 2.0, "etcd_store_txns_per_reattach": 0.016,
            "ctl_bench_etcd": {"etcd_txns_per_handshake": 0.008},
            "handshakes_cluster_over_nostore": 0.444, "reattaches_cluster_over_nostore": 0.02,
            "handshakes_cluster_over_store": 0.523, "reattaches_cluster_over_store": 0.178,
            "reattach_rtt_us_min": 300, "reattach_rtt_us_p90": 700, "reattach_rtt_us_max": 1200,
            "cluster_reattach_rtt_us": [2500, 3000, 4000],
            "cluster_reattach_rtt_us_min": 2500, "cluster_reattach_rtt_us_p50": 3000,
            "cluster_reattach_rtt_us_p90": 4000, "cluster_reattach_rtt_us_max": 4000,
            "foreign_over_relay": 0.26, "unknown_over_relay": 0.25,
            "foreign_over_unknown": 1.04, "foreign_over_unknown_big": 1.1,
            "foreign_minus_drop_ns": 16.0, "unknown_minus_drop_ns": 15.0,
        });
        // The tunnel figures.
        let tunnel = json!({
            "tunnel_up_mbps": 2100.0, "tunnel_down_mbps": 1800.0,
            "wireguard_go_up_mbps": 700.0, "wireguard_go_down_mbps": 600.0,
            "tunnel_over_wireguard_go_up": 3.0, "tunnel_over_wireguard_go_down": 3.0,
            "tunnel_over_wireguard_go": 3.0,
            "tunnel_up_retransmits": 120, "tunnel_down_retransmits": 80,
            "wireguard_go_up_retransmits": 4500, "wireguard_go_down_retransmits": 3900,
            "tunnel": {"rounds": 3, "seconds_per_run": 5, "tunnel_mtu": 1400,
                       "wireguard_go_mtu": 1400, "wireguard_go_version": "wireguard-go v0.0.20220316",
                       "client_switches": 0},
        });
        // The flood figures.
        let flood = json!({
            "flood_gate": "default", "flood_hello_pps": 1_002_431.0,
            "flood_reattach_pps": 501_304.0, "flood_hello_target_pps": 1_000_000,
            "flood_reattach_target_pps": 500_000,
            "legit_handshake_ms": [2.0, 1.5, 116.7], "unloaded_legit_handshake_ms": [1.7, 1.4, 1.6],
            "legit_handshake_success": 1.0, "unloaded_legit_handshake_success": 1.0,
            "legit_handshake_ms_p50": 2.0, "legit_handshake_ms_p99": 116.7,
            "unloaded_legit_handshake_ms_p50": 1.6, "unloaded_legit_handshake_ms_p99": 1.7,
            "legit_reattach_rtt_us": [1300, 2100], "unloaded_legit_reattach_rtt_us": [1200, 1400],
            "legit_reattach_rtt_us_p50": 1300, "legit_reattach_rtt_us_p99": 2100,
            "unloaded_legit_reattach_rtt_us_p50": 1200, "unloaded_legit_reattach_rtt_us_p99": 1400,
            "legit_reattach_p99_over_unloaded": 1.5, "spurious_volatile": 0,
            "unloaded_spurious_volatile": 0, "event_log_bytes_per_s": 68743,
            "unloaded_event_log_bytes_per_s": 5486, "controller_cpu": 0.1,
            "unloaded_controller_cpu": 0.015, "controller_hello_sig_verifications": 20,
            "unloaded_controller_hello_sig_verifications": 20,
            "flood_controller_hello_bad_signature": 0,
            "unloaded_controller_hello_bad_signature": 0,
            "flood_xdp_drops": {"control_limited": 2_029_892, "hello_cookie_sent": 4_043_859},
            "flood_generator_ns_per_frame": {"data": 24.0, "hello": 44.0, "reattach": 50.0},
        });
        let mut v = v;
        for (k, x) in store
            .as_object()
            .expect("an object")
            .iter()
            .chain(cluster.as_object().expect("an object"))
            .chain(tunnel.as_object().expect("an object"))
            .chain(flood.as_object().expect("an object"))
        {
            v[k] = x.clone();
        }
        for (series, values) in [
            (
                "foreign",
                json!({"1000": 22.0, "65536": 22.5, "1000000": 24.0}),
            ),
            (
                "unknown",
                json!({"1000": 21.0, "65536": 21.0, "1000000": 22.0}),
            ),
        ] {
            v["ns_per_pkt"][series] = values;
        }
        v
    }

    fn render_into(results: &Value) -> (TempDir, Vec<PathBuf>) {
        let dir = TempDir::new();
        let out = dir.0.join("out");
        let files = render(results, "results.json", &out).unwrap();
        let names: Vec<PathBuf> = files
            .iter()
            .map(|f| f.strip_prefix(&out).unwrap().to_path_buf())
            .collect();
        assert_eq!(
            names,
            [
                "REPORT.md",
                "plots/pps.svg",
                "plots/ns_per_pkt.svg",
                "plots/reattach_rtt.svg",
                "plots/tunnel.svg",
                "plots/flood.svg"
            ]
            .map(PathBuf::from)
        );
        for f in &files {
            assert!(f.is_file(), "{}", f.display());
            if f.extension().is_some_and(|e| e == "svg") {
                let doc = fs::read_to_string(f).unwrap();
                xml_check::check(&doc).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            }
        }
        (dir, files)
    }

    #[test]
    fn renders_the_full_example() {
        let (_dir, files) = render_into(&example());
        let md = fs::read_to_string(&files[0]).unwrap();
        for want in [
            "(full run) from a run started 2026-11-18 11:06 UTC, which took 8m32s",
            "[results.json](results.json)",
            "**Machine:** AMD EPYC 7B13, 2 cores, Linux 6.18.0, 24.0 GiB RAM.",
            "**19 of 20 goals met**, 1 missed.",
            "| handshakes done within 2 s | 3 of 3 (100 %) | 3 of 3 (100 %) | ≥ 1 (✅ met) |",
            "| reattach round trip p50 / p99 | 1200.0 µs / 1400.0 µs | 1300.0 µs / 2100.0 µs (1.50× unloaded) | ≤ 2 (✅ met) |",
            "| hello_cookie_sent | 4,043,859 |",
            "data 24.0 ns, hello 44.0 ns, reattach 50.0 ns",
            "](plots/flood.svg)",
            "| up (client → exit) | 2100 | 700 | 3.00× | 120 | 4,500 |",
            "| down (exit → client) | 1800 | 600 | 3.00× | 80 | 3,900 |",
            "`tunnel_over_wireguard_go` (the lower of the two directions): 3.00×. 3 rounds, 5 s per run",
            "| TCP through the tunnel / through wireguard-go, the lower direction (`tunnel_over_wireguard_go`) | ≥ 2 | 3.00 | ✅ met |",
            "](plots/tunnel.svg)",
            "| relay throughput / plain XDP redirect forwarder (`relay_over_fwd`) | ≥ 0.85 | 0.93 | ✅ met |",
            "| mode | 64 B payload (106 B frame) | 1400 B payload (1442 B frame) |",
            "| XDP_DROP (ceiling) | 7.10 | 2.00 |",
            "| userspace relay (recvmmsg/sendmmsg) | 0.40 | 0.35 |",
            "| relay_1m | 64 | 106 | 3,700,000 | 18,500,000 | 18,500,000 | 5.0 |",
            "| 65,536 | 41.0 | 141.0 | 26.1 | 14.9 |",
            "| swap time p50 / p99 / max | 2.1 µs / 6.3 µs / 40.0 µs |",
            "| in flight across a swap back (not misrouted) | 12,345 |",
            "| reattach round trip p50 / p99 | 480.0 µs / 900.0 µs |",
            "| round-trip samples | 2,000 |",
            "| handshakes/s, no store / store | 9,000 / 7,650 (0.85×) |",
            "| reattaches/s, no store / store | 230,000 / 25,300 (0.11×) |",
            "| restart, controller's part (open, unseal, resume, commit) | 646.7 ms |",
            "| store bytes per session (file size / sessions) | 705 B |",
            "| handshakes/s / reattaches/s, etcd store (one member on loopback) | 7,400 / 22,600 |",
            "| restart, controller's part, from etcd | 215.9 ms |",
            "| reattach round trip p50 / p99, store on a tmpfs | 400.0 µs / 700.0 µs |",
            "| etcd, a cluster node | 4,000 | 4,500 | 1.000 / 2.000 |",
            "| etcd, a single gateway's store | 7,400 | 22,600 | 0.008 / 0.016 |",
            "| cluster node / local store: handshakes, reattaches | 0.523×, 0.178× |",
            "| cluster node, etcd CAS | 3 | 2500.0 µs | 3000.0 µs | 4000.0 µs | 4000.0 µs |",
            "| single gateway, local store | 2,000 | 300.0 µs | 480.0 µs | 700.0 µs | 1200.0 µs |",
            "Cluster / local store at p50: 6.25×.",
            "| 65,536 | 41.0 | 22.5 | 21.0 | 26.1 |",
            "| for 1,000,000 sessions | 1.4 GiB |",
            "![Throughput by mode](plots/pps.svg)",
            "](plots/ns_per_pkt.svg)",
            "](plots/reattach_rtt.svg)",
            "not comparable",
        ] {
            assert!(md.contains(want), "missing {want:?} in\n{md}");
        }
        // Only the footer explaining "—": nothing is missing.
        assert_eq!(md.matches('—').count(), 1, "{md}");
        let rtt = fs::read_to_string(&files[3]).unwrap();
        assert!(rtt.contains("p50 480.0 µs") && rtt.contains("p99 900.0 µs"));
        assert!(!rtt.contains("no data"));
    }

    #[test]
    fn renders_partial_and_empty_results() {
        let (_dir, files) = render_into(&json!({}));
        let md = fs::read_to_string(&files[0]).unwrap();
        assert!(md.contains("**0 of 20 goals met**, 20 not measured."));
        for plot in &files[1..] {
            assert!(fs::read_to_string(plot).unwrap().contains("no data"));
        }

        let mut partial = example();
        let obj = partial.as_object_mut().unwrap();
        for key in [
            "swap_us_p99",
            "ns_per_pkt",
            "reattach_rtt_us",
            "machine",
            "started_unix",
        ] {
            obj.remove(key);
        }
        obj.insert("relay_over_fwd".into(), Value::Null);
        obj.insert("quick".into(), json!(true));
        obj["pps"].as_array_mut().unwrap().truncate(3);
        let (_dir, files) = render_into(&partial);
        let md = fs::read_to_string(&files[0]).unwrap();
        assert!(
            md.contains("**17 of 20 goals met**, 1 missed, 2 not measured."),
            "{md}"
        );
        assert!(
            md.contains("| jvpn relay, 1M sessions | 3.70 | — |"),
            "{md}"
        );
        assert!(md.contains("date unknown"));
        assert!(md.contains("> **Quick run: a smoke check.**"));
        let ns = fs::read_to_string(&files[2]).unwrap();
        assert!(ns.contains("no data"));
        let rtt = fs::read_to_string(&files[3]).unwrap();
        assert!(rtt.contains("no data"));

        // Not even an object.
        render_into(&json!([1, 2]));
        render_into(&Value::Null);
    }

    #[test]
    fn refuses_another_schema() {
        let dir = TempDir::new();
        let err = render(&json!({"schema": 2}), "r.json", &dir.0).unwrap_err();
        assert!(err.to_string().contains("schema 2"), "{err}");
        assert!(!dir.0.join("REPORT.md").exists());
        render(&json!({"schema": null}), "r.json", &dir.0).unwrap();
    }
}
