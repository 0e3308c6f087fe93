//! Turns a results file ([`Results`], the schema shared with the writer) into the
//! tables the report and the plots show. A phase that did not run has no group, so
//! its figures are `None` here and show as missing; nothing here fails.

use super::schema::{Direction, Mode, PpsRow, Results, TunnelImpl};

/// A benchmark mode as the report names it.
pub struct ModeName {
    /// The row name in REPORT.md.
    pub name: &'static str,
    /// Two short lines under its bars in the plot.
    pub label: [&'static str; 2],
}

/// Every mode's names (a new mode is a compile error here until it has them).
pub fn mode_name(mode: Mode) -> ModeName {
    let (name, label) = match mode {
        Mode::Drop => ("XDP_DROP (ceiling)", ["XDP_DROP", "(ceiling)"]),
        Mode::Fwd => (
            "XDP redirect forwarder (ceiling)",
            ["XDP redirect", "(ceiling)"],
        ),
        Mode::Relay1k => ("jvpn relay, 1k sessions", ["jvpn relay", "1k sessions"]),
        Mode::Relay1m => ("jvpn relay, 1M sessions", ["jvpn relay", "1M sessions"]),
        Mode::Relay1kFib => (
            "jvpn relay, 1k sessions, FIB per packet (table suspended)",
            ["relay, FIB", "1k sessions"],
        ),
        Mode::Relay1mFib => (
            "jvpn relay, 1M sessions, FIB per packet (table suspended)",
            ["relay, FIB", "1M sessions"],
        ),
        Mode::Relay1k2Cpu => (
            "jvpn relay, 1k sessions, traffic from 2 CPUs (2-queue veth)",
            ["jvpn relay", "2 CPUs"],
        ),
        Mode::Userspace => (
            "userspace relay (recvmmsg/sendmmsg)",
            ["userspace relay", "(mmsg)"],
        ),
        Mode::KernelFwd => ("kernel IP forwarding", ["kernel IP", "forwarding"]),
    };
    ModeName { name, label }
}

/// The payload the headline figures (`drop_pps`, `relay_pps`, …) were measured with.
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
    pub fn read(results: &Results) -> Self {
        let t = results.throughput.as_ref();
        let entries = pps_entries(results);

        // Columns: every payload an entry or the setup names, and the headline one
        // when any headline figure exists.
        let mut sizes: Vec<u64> = entries.iter().map(|e| e.payload as u64).collect();
        sizes.extend(results.setup.payloads.iter().map(|&p| p as u64));
        if t.is_some_and(|t| Mode::ALL.iter().any(|&m| t.headline(m).is_some())) {
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
                    .find(|e| e.payload as u64 == bytes)
                    .map(|e| e.frame_bytes as u64),
            })
            .collect();

        let lookup = |mode: Mode, payload: u64| {
            entries
                .iter()
                .find(|e| e.mode == mode && e.payload as u64 == payload)
                .map(|e| e.pps)
                .filter(|p| p.is_finite())
        };
        let rows = Mode::ALL
            .into_iter()
            .map(|m| {
                let names = mode_name(m);
                ModeRow {
                    name: names.name.into(),
                    label: names.label.map(str::to_owned),
                    pps: sizes
                        .iter()
                        .map(|&p| {
                            lookup(m, p).or_else(|| {
                                (p == HEADLINE_PAYLOAD)
                                    .then(|| t.and_then(|t| t.headline(m)))
                                    .flatten()
                            })
                        })
                        .collect(),
                }
            })
            .collect();
        Self { payloads, rows }
    }

    pub fn has_data(&self) -> bool {
        self.rows.iter().flat_map(|r| &r.pps).any(Option::is_some)
    }
}

/// The raw counts behind the throughput table.
pub fn pps_entries(results: &Results) -> &[PpsRow] {
    results.throughput.as_ref().map_or(&[], |t| &t.pps)
}

/// Nanoseconds per packet by session-table size, for the relay and for XDP_DROP.
#[derive(Default)]
pub struct NsPerPkt {
    /// Ascending.
    pub sessions: Vec<u64>,
    pub relay: Vec<Option<f64>>,
    /// The relay with its next-hop table suspended (the FIB per packet).
    pub relay_fib: Vec<Option<f64>>,
    pub drop: Vec<Option<f64>>,
    /// The cluster check: DATA of an admitted foreign session, and of an unknown id.
    pub foreign: Vec<Option<f64>>,
    pub unknown: Vec<Option<f64>>,
}

impl NsPerPkt {
    pub fn read(results: &Results) -> Self {
        let Some(n) = results.cost.as_ref().map(|c| &c.ns_per_pkt) else {
            return Self::default();
        };
        let mut sessions: Vec<u64> = n.relay.keys().chain(n.drop.keys()).copied().collect();
        sessions.sort_unstable();
        sessions.dedup();
        let values = |series: &std::collections::BTreeMap<u64, f64>| {
            sessions
                .iter()
                .map(|s| series.get(s).copied().filter(|v| v.is_finite()))
                .collect()
        };
        Self {
            relay: values(&n.relay),
            relay_fib: values(&n.relay_fib),
            drop: values(&n.drop),
            foreign: values(&n.foreign),
            unknown: values(&n.unknown),
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
    /// The percentiles are the benchmark's own.
    pub fn read(results: &Results) -> Self {
        let r = results.reattach.as_ref();
        let mut samples: Vec<f64> = r
            .map(|r| {
                r.reattach_rtt_us
                    .iter()
                    .copied()
                    .filter(|x| x.is_finite())
                    .collect()
            })
            .unwrap_or_default();
        samples.sort_by(f64::total_cmp);
        Self {
            p50: r.map(|r| r.reattach_rtt_us_p50),
            p99: r.map(|r| r.reattach_rtt_us_p99),
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

/// The two directions, in the order of [`Tunnel`]'s pairs.
pub const DIRECTIONS: [Direction; 2] = [Direction::Up, Direction::Down];

impl Tunnel {
    pub fn read(r: &Results) -> Self {
        let t = r.tunnel.as_ref();
        let mbps = |which| DIRECTIONS.map(|d| t.map(|t| t.mbps(which, d)));
        let retransmits =
            |which| DIRECTIONS.map(|d| t.and_then(|t| t.retransmits(which, d)).map(|n| n as f64));
        let (jvpn, wg) = (mbps(TunnelImpl::Tunnel), mbps(TunnelImpl::WireguardGo));
        let mut ratio = [None; 2];
        for (i, d) in DIRECTIONS.into_iter().enumerate() {
            // The runner's ratio, or (a 0 baseline aside) the same from the medians.
            ratio[i] = t.and_then(|t| t.ratio(d)).or_else(|| {
                jvpn[i]
                    .zip(wg[i])
                    .filter(|(_, w)| *w > 0.0)
                    .map(|(m, w)| m / w)
            });
        }
        Self {
            jvpn,
            wireguard_go: wg,
            jvpn_retransmits: retransmits(TunnelImpl::Tunnel),
            wireguard_go_retransmits: retransmits(TunnelImpl::WireguardGo),
            ratio,
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
#[derive(Default)]
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

impl Flood {
    pub fn read(r: &Results) -> Self {
        let Some(f) = r.flood.as_ref() else {
            return Self::default();
        };
        let w = f.windows();
        let finite = |v: &[Option<f64>]| -> Vec<Option<f64>> {
            v.iter().map(|x| x.filter(|x| x.is_finite())).collect()
        };
        let [u99, f99] = [&w[0], &w[1]].map(|w| w.reattach_rtt_us_p99);
        let mut xdp: Vec<(String, f64)> = f
            .under_flood
            .xdp_drops
            .iter()
            .map(|(k, &v)| (k.clone(), v as f64))
            .collect();
        xdp.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        Self {
            hello_pps: Some(f.flood_hello_pps),
            reattach_pps: Some(f.flood_reattach_pps),
            hello_target: Some(f.flood_hello_target_pps as f64),
            reattach_target: Some(f.flood_reattach_target_pps as f64),
            gate: Some(f.flood_gate.clone()),
            handshake_ms: [&w[0], &w[1]].map(|w| finite(&w.handshake_ms)),
            handshake_success: [&w[0], &w[1]].map(|w| Some(w.handshake_success)),
            handshake_ms_p50: [&w[0], &w[1]].map(|w| w.handshake_ms_p50),
            handshake_ms_p99: [&w[0], &w[1]].map(|w| w.handshake_ms_p99),
            reattach_us: [&w[0], &w[1]].map(|w| finite(&w.reattach_rtt_us)),
            reattach_us_p50: [&w[0], &w[1]].map(|w| w.reattach_rtt_us_p50),
            reattach_us_p99: [u99, f99],
            // The runner's, or the same from the two p99s.
            reattach_p99_ratio: f
                .legit_reattach_p99_over_unloaded
                .or_else(|| f99.zip(u99).filter(|(_, u)| *u > 0.0).map(|(f, u)| f / u)),
            spurious_volatile: [&w[0], &w[1]].map(|w| Some(w.spurious_volatile as f64)),
            event_log_bytes_per_s: [&w[0], &w[1]].map(|w| Some(w.event_log_bytes_per_s)),
            controller_cpu: [&w[0], &w[1]].map(|w| Some(w.controller_cpu)),
            sig_verifications: [&w[0], &w[1]]
                .map(|w| Some(w.controller_hello_sig_verifications as f64)),
            bad_signatures: [&w[0], &w[1]].map(|w| Some(w.controller_hello_bad_signature as f64)),
            xdp,
            generator_ns: f
                .flood_generator_ns_per_frame
                .iter()
                .map(|(k, &v)| (k.clone(), v))
                .collect(),
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
pub(super) mod tests {
    use super::{
        super::schema::{self as schema, example},
        *,
    };

    /// A throughput row with only what the tests vary (also the plots' tests').
    pub(in crate::report) fn row(
        mode: Mode,
        payload: usize,
        frame_bytes: usize,
        pps: f64,
    ) -> PpsRow {
        PpsRow {
            mode,
            payload,
            frame_bytes,
            pps,
            sent: 0,
            received: 0,
            seconds: 1.0,
            rounds_pps: vec![pps],
            slow_path: None,
        }
    }

    #[test]
    fn throughput_table() {
        let mut r = example::nothing_ran();
        r.setup.payloads = vec![1400, 64];
        r.throughput = Some(schema::Throughput {
            pps: vec![
                row(Mode::Drop, 64, 106, 7.1e6),
                row(Mode::Relay1k, 1400, 1442, 1.0e6),
            ],
            fwd_pps: Some(4.2e6),
            ..schema::Throughput::default()
        });
        let t = Throughput::read(&r);
        let sizes: Vec<_> = t
            .payloads
            .iter()
            .map(|p| (p.bytes, p.frame_bytes))
            .collect();
        assert_eq!(sizes, [(64, Some(106)), (1400, Some(1442))]);
        assert_eq!(t.rows.len(), Mode::ALL.len());
        assert_eq!(t.rows[0].pps, [Some(7.1e6), None]);
        // The headline figure fills the 64-byte cell the rows lack.
        assert_eq!(t.rows[1].pps, [Some(4.2e6), None]);
        assert_eq!(t.rows[2].pps, [None, Some(1.0e6)]);
        assert_eq!(t.rows[2].name, "jvpn relay, 1k sessions");
        assert!(t.has_data());

        // Not run: the setup's payloads as columns, nothing in them.
        let empty = Throughput::read(&example::nothing_ran());
        assert_eq!(empty.payloads.len(), 2);
        assert_eq!(empty.rows.len(), Mode::ALL.len());
        assert!(!empty.has_data());
    }

    #[test]
    fn ns_per_pkt_and_rtt() {
        let mut r = example::nothing_ran();
        r.cost = Some(schema::Cost {
            ns_per_pkt: schema::NsPerPkt {
                relay: [(1_000_000, 45.0), (1000, 40.1)].into(),
                drop: [(1000, 26.0)].into(),
                ..schema::NsPerPkt::default()
            },
            ..schema::Cost::default()
        });
        r.reattach = Some(schema::Reattach {
            reattach_rtt_us: vec![5.0, 1.0, 4.0, 2.0, 3.0],
            reattach_rtt_us_p50: 3.0,
            reattach_rtt_us_p99: 4.5,
            ..schema::Reattach::default()
        });
        let n = NsPerPkt::read(&r);
        assert_eq!(n.sessions, [1000, 1_000_000]);
        assert_eq!(n.relay, [Some(40.1), Some(45.0)]);
        assert_eq!(n.drop, [Some(26.0), None]);
        assert_eq!(n.foreign, [None, None]);
        let rtt = Rtt::read(&r);
        assert_eq!(rtt.samples, [1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(rtt.p50, Some(3.0));
        assert_eq!(rtt.p99, Some(4.5));
        let none = example::nothing_ran();
        assert!(!NsPerPkt::read(&none).has_data());
        assert_eq!(Rtt::read(&none).p50, None);
    }

    #[test]
    fn tunnel_figures() {
        let mut r = example::nothing_ran();
        let mut t = example::results().tunnel.unwrap();
        t.tunnel_up_mbps = 2000.0;
        t.tunnel_down_mbps = 1500.0;
        t.wireguard_go_up_mbps = 800.0;
        t.wireguard_go_down_mbps = 0.0;
        t.tunnel_over_wireguard_go_up = Some(2.4);
        t.tunnel_over_wireguard_go_down = None;
        t.tunnel_down_retransmits = None;
        r.tunnel = Some(t.clone());
        let v = Tunnel::read(&r);
        assert_eq!(v.jvpn, [Some(2000.0), Some(1500.0)]);
        assert_eq!(v.wireguard_go, [Some(800.0), Some(0.0)]);
        // The runner's ratio wins; one over a 0 is not made up.
        assert_eq!(v.ratio, [Some(2.4), None]);
        assert_eq!(v.jvpn_retransmits, [Some(120.0), None]);
        assert!(v.has_data());
        t.tunnel_over_wireguard_go_up = None;
        r.tunnel = Some(t);
        assert_eq!(Tunnel::read(&r).ratio, [Some(2.5), None]);
        assert!(!Tunnel::read(&example::nothing_ran()).has_data());
    }

    #[test]
    fn flood_figures() {
        let mut r = example::nothing_ran();
        let mut f = example::results().flood.unwrap();
        f.under_flood.handshake_ms = vec![Some(1.5), None, Some(3.0)];
        f.unloaded.handshake_ms = vec![Some(1.0)];
        f.under_flood.reattach_rtt_us_p99 = Some(3000.0);
        f.unloaded.reattach_rtt_us_p99 = Some(1000.0);
        f.legit_reattach_p99_over_unloaded = None;
        f.under_flood.controller_hello_bad_signature = 7;
        f.under_flood.xdp_drops = [
            ("control_limited".to_string(), 5),
            ("hello_cookie_sent".to_string(), 9),
        ]
        .into();
        r.flood = Some(f);
        let f = Flood::read(&r);
        assert_eq!(f.hello_pps, Some(1_002_431.0));
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
        assert!(!Flood::read(&example::nothing_ran()).has_data());
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
