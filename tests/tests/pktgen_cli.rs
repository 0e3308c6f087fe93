//! Bad input to `jvpn-ctl pktgen` and `jvpn-ctl sink`: exactly one line on stderr,
//! starting `error:` and naming the problem, a non-zero exit, and nothing sent.

use std::process::{Command, Output};

use jvpn_tests::{
    gwlab::jvpn_ctl_bin,
    pktgen_lab::{GEN_IF, Pair},
    require_root,
};

/// Arguments that are valid everywhere but for what a case changes.
const BASE: &[&str] = &[
    "pktgen",
    "--iface",
    "lo",
    "--src",
    "10.0.0.1",
    "--dst",
    "10.0.0.2",
    "--dst-mac",
    "02:00:00:00:00:02",
];

fn one_line_error(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure for `{needle}`, got success; stderr: {stderr}"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "not one line: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(stderr.contains(needle), "stderr lacks `{needle}`: {stderr}");
    assert!(
        out.stdout.is_empty(),
        "printed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// `jvpn-ctl` with BASE, the last value of each `--flag` in `change` replacing the
/// base's, and `extra` appended.
fn pktgen(change: &[&str]) -> Output {
    let mut args: Vec<&str> = BASE.to_vec();
    for pair in change.chunks(2) {
        if let Some(i) = args.iter().position(|a| *a == pair[0]) {
            args.drain(i..=i + 1);
        }
        args.extend_from_slice(pair);
    }
    Command::new(jvpn_ctl_bin()).args(&args).output().unwrap()
}

#[test]
fn bad_values_are_named_before_anything_happens() {
    // No root needed: these are refused before the system is asked anything.
    for (change, needle) in [
        (&["--count", "1", "--rate", "0"][..], "--rate"),
        (
            &["--count", "1", "--rate", "fast"],
            "invalid value 'fast' for '--rate <PPS>'",
        ),
        (
            &["--count", "1", "--rate", "-5"],
            "invalid value '-5' for '--rate <PPS>'",
        ),
        (
            &["--count", "-1"],
            "invalid value '-1' for '--count <COUNT>'",
        ),
        (&["--duration", "-1"], "-1 seconds is outside (0, 86400]"),
        (&["--count", "0"], "--count"),
        (&["--duration", "0"], "0 seconds is outside (0, 86400]"),
        (&["--duration", "soon"], "`soon` is not a number of seconds"),
        (&["--count", "1", "--duration", "1"], "cannot be used with"),
        (&["--sessions", "1"], "--count"),
        (&["--count", "1", "--sessions", "0"], "--sessions"),
        (
            &["--count", "1", "--first-id", "0"],
            "session id 0 is reserved",
        ),
        (
            &[
                "--count",
                "1",
                "--first-id",
                "0xffffffffffffffff",
                "--sessions",
                "2",
            ],
            "run past the largest session id",
        ),
        (
            &["--count", "1", "--first-id", "lots"],
            "`lots` is not a session id",
        ),
        (
            &["--count", "1", "--payload", "35"],
            "payload of 35 bytes is too small",
        ),
        (&["--count", "1", "--payload", "big"], "--payload"),
        (
            &["--count", "1", "--cpus", "1-0"],
            "invalid CPU list `1-0`: range 1-0 runs backwards",
        ),
        (&["--count", "1", "--cpus", "0,0"], "CPU 0 is listed twice"),
        (&["--count", "1", "--cpus", "x"], "`x` is not a CPU number"),
        (
            &["--count", "1", "--cpus", "1000"],
            "CPU 1000 is not available to this process",
        ),
        (
            &["--count", "1", "--cpus", "4000"],
            "CPU 4000 is beyond the largest CPU number",
        ),
        (
            &["--count", "1", "--batch", "0"],
            "batch size 0 is outside 1..=256",
        ),
        (
            &["--count", "1", "--batch", "257"],
            "batch size 257 is outside 1..=256",
        ),
        (
            &["--count", "1", "--dst", "fd00::2"],
            "not of the same address family",
        ),
        (
            &["--count", "1", "--dst-mac", "02:00"],
            "`02:00` is not a MAC address",
        ),
        (&["--count", "1", "--src", "10.0.0"], "--src"),
        (&["--count", "1", "--dst-port", "0"], "--dst-port"),
    ] {
        one_line_error(&pktgen(change), needle);
    }
    let out = Command::new(jvpn_ctl_bin())
        .args(["sink", "--iface", "lo", "--mode", "everything"])
        .output()
        .unwrap();
    one_line_error(&out, "--mode");
}

#[test]
fn unknown_interface_is_named() {
    one_line_error(
        &pktgen(&["--count", "1", "--iface", "nosuchif0"]),
        "interface `nosuchif0` does not exist",
    );
    let out = Command::new(jvpn_ctl_bin())
        .args(["sink", "--iface", "nosuchif0"])
        .output()
        .unwrap();
    one_line_error(&out, "interface `nosuchif0` does not exist");
}

#[test]
fn missing_privilege_is_named() {
    require_root!();
    for args in [
        &BASE
            .iter()
            .copied()
            .chain(["--count", "1"])
            .collect::<Vec<_>>()[..],
        &["sink", "--iface", "lo"],
    ] {
        let out = Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
                "--bounding-set=-all",
            ])
            .arg(jvpn_ctl_bin())
            .args(args)
            .output()
            .unwrap();
        one_line_error(&out, "missing privilege");
    }
}

#[test]
fn payloads_over_the_mtu_and_missing_macs_are_named() {
    require_root!();
    let pair = Pair::new("jpc");
    let run = |args: &[&str]| {
        pair.jvpn_ctl()
            .args(["pktgen", "--iface", GEN_IF, "--count", "1"])
            .args(args)
            .output()
            .unwrap()
    };
    let mac = ["--dst-mac", "02:00:00:00:00:02"];
    // 20 + 8 + 1473 = 1501 over IPv4; 40 + 8 + 1453 = 1501 over IPv6.
    for (src, dst, payload) in [
        ("10.201.0.1", "10.201.0.2", "1473"),
        ("fd00:201::1", "fd00:201::2", "1453"),
    ] {
        one_line_error(
            &run(&[
                &["--src", src, "--dst", dst, "--payload", payload][..],
                &mac,
            ]
            .concat()),
            &format!(
                "payload of {payload} bytes makes a 1501-byte IP packet, over the MTU of `{GEN_IF}` (1500)"
            ),
        );
    }
    // The largest that fits is accepted (and sent: nobody listens, that is fine).
    let out = run(&[
        &[
            "--src",
            "10.201.0.1",
            "--dst",
            "10.201.0.2",
            "--payload",
            "1472",
        ][..],
        &mac,
    ]
    .concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Past the MTU check, the page that live-frames mode puts each frame in.
    pair.generator
        .ip(&["link", "set", GEN_IF, "mtu", "4000"])
        .unwrap();
    one_line_error(
        &run(&[
            &[
                "--src",
                "10.201.0.1",
                "--dst",
                "10.201.0.2",
                "--payload",
                "3367",
            ][..],
            &mac,
        ]
        .concat()),
        "frames of 3409 bytes are too long for the kernel's live-frames mode (at most 3408",
    );
    pair.generator
        .ip(&["link", "set", GEN_IF, "mtu", "1500"])
        .unwrap();
    // Without --dst-mac, the neighbour table is asked; it has no entry.
    one_line_error(
        &run(&["--src", "10.201.0.1", "--dst", "10.201.0.99"]),
        "no destination MAC: pass --dst-mac, or add a neighbour entry for 10.201.0.99",
    );
    // With an entry, that MAC is used.
    pair.generator
        .neigh_permanent("10.201.0.99", "02:00:00:00:00:99", GEN_IF)
        .unwrap();
    let out = run(&["--src", "10.201.0.1", "--dst", "10.201.0.99"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
