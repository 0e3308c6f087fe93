//! The benchmark report: `cargo xtask bench` writes its results as JSON (schema 1,
//! [`schema`]) and this turns them into `REPORT.md` with five SVG plots beside it. The
//! plots are hand-written SVG rather than a plotting crate's, to keep xtask quick to
//! compile. A partial run (a phase failed or was skipped) still renders: the report
//! says which phases did not run and why, whatever is missing shows as "—", and a plot
//! without data says so. A results file that is not of the schema (a figure missing
//! from a phase that has the others, a wrong type) does not render: loading names the
//! file and the field.

mod data;
mod format;
mod goals;
mod markdown;
mod plots;
/// The results file's schema, shared with the writer (`jvpn-bench`): the same file,
/// compiled here because xtask cannot depend on `jvpn-tests` (docs/bench.md, "The
/// results file").
#[path = "../../../tests/src/bench/schema.rs"]
pub mod schema;
mod svg;
#[cfg(test)]
mod xml_check;

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use serde::Deserialize as _;
use serde_json::Value;

pub use format::civil;
pub use goals::goals;
use schema::Results;

/// The plots' directory under the output directory, as REPORT.md links it.
const PLOTS: &str = "plots";

/// Reads a results file: its schema, then every figure, an error naming the file and
/// what is wrong (`missing field `swap_lost``).
pub fn load(path: &Path) -> Result<Results> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let value: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    parse(&value, &path.display().to_string())
}

/// `value` as results; `name` says where it came from in an error.
fn parse(value: &Value, name: &str) -> Result<Results> {
    // A later schema may mean something else by the same keys.
    match value.get("schema") {
        Some(s) if s.as_u64() == Some(u64::from(schema::SCHEMA)) => {}
        Some(s) => bail!(
            "{name}: results schema {s}, but this report renders schema {}",
            schema::SCHEMA
        ),
        None => bail!("{name}: not a results file (no `schema`)"),
    }
    Results::deserialize(value)
        .with_context(|| format!("{name}: not a results file of schema {}", schema::SCHEMA))
}

/// [`render_results`] of a results JSON (`json_name` also names it in an error).
pub fn render(results: &Value, json_name: &str, out_dir: &Path) -> Result<Vec<PathBuf>> {
    render_results(&parse(results, json_name)?, json_name, out_dir)
}

/// Writes `out_dir/REPORT.md` and
/// `out_dir/plots/{pps,ns_per_pkt,reattach_rtt,tunnel,flood}.svg`
/// from results; `json_name` is how REPORT.md refers to the JSON file (a path
/// relative to `out_dir`). Returns the files written.
pub fn render_results(results: &Results, json_name: &str, out_dir: &Path) -> Result<Vec<PathBuf>> {
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

    use super::{schema::example, *};

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

    fn render_into(results: &Results) -> (TempDir, Vec<PathBuf>) {
        let dir = TempDir::new();
        let out = dir.0.join("out");
        let files = render_results(results, "results.json", &out).unwrap();
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
        let (_dir, files) = render_into(&example::results());
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
        let (_dir, files) = render_into(&example::nothing_ran());
        let md = fs::read_to_string(&files[0]).unwrap();
        assert!(
            md.contains("**0 of 20 goals met**, 20 not measured."),
            "{md}"
        );
        for plot in &files[1..] {
            assert!(fs::read_to_string(plot).unwrap().contains("no data"));
        }

        let mut partial = example::results();
        partial.swap = None;
        partial.cost = None;
        partial.reattach = None;
        partial.machine.cpu_model = None;
        partial.started_unix = 0;
        partial.quick = true;
        let t = partial.throughput.as_mut().unwrap();
        t.relay_over_fwd = None;
        t.pps.truncate(3);
        let (_dir, files) = render_into(&partial);
        let md = fs::read_to_string(&files[0]).unwrap();
        assert!(
            md.contains("**12 of 20 goals met**, 1 missed, 7 not measured."),
            "{md}"
        );
        assert!(
            md.contains("| jvpn relay, 1M sessions | 3.70 | — |"),
            "{md}"
        );
        assert!(md.contains("**Machine:** 2 cores, Linux 6.18.0, 24.0 GiB RAM."));
        assert!(
            md.contains("**Not measured:** `cost` not run; `swap` not run; `reattach` not run.")
        );
        assert!(md.contains("> **Quick run: a smoke check.**"));
        let ns = fs::read_to_string(&files[2]).unwrap();
        assert!(ns.contains("no data"));
        let rtt = fs::read_to_string(&files[3]).unwrap();
        assert!(rtt.contains("no data"));
    }

    #[test]
    fn refuses_what_is_not_results() {
        let dir = TempDir::new();
        for (v, want) in [
            (
                json!({"schema": 2}),
                "r.json: results schema 2, but this report renders schema 1",
            ),
            (json!({"schema": null}), "results schema null"),
            (
                json!({"quick": true}),
                "r.json: not a results file (no `schema`)",
            ),
            (json!([1, 2]), "no `schema`"),
            (json!({"schema": 1}), "missing field `quick`"),
        ] {
            let err = format!("{:#}", render(&v, "r.json", &dir.0).unwrap_err());
            assert!(err.contains(want), "{v}: {err}");
        }
        assert!(!dir.0.join("REPORT.md").exists());
        let v = serde_json::to_value(example::results()).unwrap();
        render(&v, "r.json", &dir.0).unwrap();
        assert!(dir.0.join("REPORT.md").exists());
    }

    /// A figure missing from a phase that has the others (a key renamed on one side) is
    /// an error naming the file and the field, not a "—" in the report.
    #[test]
    fn loading_names_the_file_and_the_missing_field() {
        let dir = TempDir::new();
        let path = dir.0.join("results.json");
        let mut v = serde_json::to_value(example::results()).unwrap();
        let swap_lost = v.as_object_mut().unwrap().remove("swap_lost").unwrap();
        fs::write(&path, v.to_string()).unwrap();
        let err = format!("{:#}", load(&path).unwrap_err());
        assert!(
            err.contains(&path.display().to_string())
                && err.contains("the swap phase's figures: missing field `swap_lost`"),
            "{err}"
        );
        // Renamed: the same.
        v["swap_lost_packets"] = swap_lost;
        fs::write(&path, v.to_string()).unwrap();
        let err = format!("{:#}", load(&path).unwrap_err());
        assert!(err.contains("missing field `swap_lost`"), "{err}");
        // A phase with none of its figures is simply not run.
        let v = serde_json::to_value(example::nothing_ran()).unwrap();
        fs::write(&path, v.to_string()).unwrap();
        assert_eq!(load(&path).unwrap(), example::nothing_ran());
        fs::write(&path, "{").unwrap();
        let err = format!("{:#}", load(&path).unwrap_err());
        assert!(err.contains("is not valid JSON"), "{err}");
    }
}
