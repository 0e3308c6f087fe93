//! The plots of REPORT.md, as SVG text. Each has a "no data" form, so a partial
//! run still gets every file the report links to.

use super::{
    data::{self, Flood, NsPerPkt, Rtt, Throughput, Tunnel},
    format,
    svg::{self, Anchor, Area, GRID, INK, MUTED, PALETTE, Svg, Ticks},
};

/// Grouped bars: one group per mode, one bar per payload size, in Mpps.
pub fn pps(t: &Throughput) -> String {
    const TITLE: &str = "Throughput by mode (higher is better)";
    if !t.has_data() {
        return svg::no_data(TITLE, "the run measured no throughput");
    }
    let area = Area::DEFAULT;
    let mut svg = Svg::new(TITLE);
    let max = t
        .rows
        .iter()
        .flat_map(|r| r.pps.iter().flatten())
        .fold(0.0, |m: f64, &p| m.max(p / 1e6));
    // Headroom above the tallest bar for its value.
    let ticks = Ticks::from_zero(max * 1.1, 5);
    let y = svg::y_axis(&mut svg, area, ticks, "million packets per second (Mpps)");

    let group = area.width() / t.rows.len() as f64;
    let bar = group * 0.8 / t.payloads.len() as f64;
    let value_size = if bar >= 30.0 { 11.0 } else { 9.0 };
    for (i, row) in t.rows.iter().enumerate() {
        let gx = area.left + group * i as f64;
        for (j, pps) in row.pps.iter().enumerate() {
            let x = gx + group * 0.1 + bar * j as f64;
            let cx = x + bar / 2.0;
            match pps {
                Some(p) => {
                    let top = y(p / 1e6).min(area.bottom);
                    let colour = PALETTE[j % PALETTE.len()];
                    svg.rect(x + 1.0, top, bar - 2.0, area.bottom - top, colour);
                    let value = format::mpps(Some(*p));
                    svg.text(cx, top - 4.0, value_size, Anchor::Middle, &value, INK);
                }
                // Missing, not zero.
                None => svg.text(
                    cx,
                    area.bottom - 4.0,
                    value_size,
                    Anchor::Middle,
                    format::MISSING,
                    MUTED,
                ),
            }
        }
        let cx = gx + group / 2.0;
        svg.text(
            cx,
            area.bottom + 17.0,
            12.0,
            Anchor::Middle,
            &row.label[0],
            INK,
        );
        svg.text(
            cx,
            area.bottom + 31.0,
            11.0,
            Anchor::Middle,
            &row.label[1],
            MUTED,
        );
    }
    svg::axes(&mut svg, area);
    let items: Vec<(&str, String)> = t
        .payloads
        .iter()
        .enumerate()
        .map(|(j, p)| {
            let label = match p.frame_bytes {
                Some(f) => format!("{} B payload ({f} B frame)", p.bytes),
                None => format!("{} B payload", p.bytes),
            };
            (PALETTE[j % PALETTE.len()], label)
        })
        .collect();
    svg::legend(&mut svg, area, &items);
    svg.finish()
}

/// Lines over a log-scaled session axis: relay and XDP_DROP, ns/packet from zero.
pub fn ns_per_pkt(n: &NsPerPkt) -> String {
    const TITLE: &str = "Time per packet vs. sessions in the table (lower is better)";
    if !n.has_data() {
        return svg::no_data(TITLE, "the run measured no time per packet");
    }
    let area = Area::DEFAULT;
    let mut svg = Svg::new(TITLE);
    let logs: Vec<f64> = n
        .sessions
        .iter()
        .map(|&s| (s.max(1) as f64).log10())
        .collect();
    let (lo, hi) = (logs[0] - 0.3, logs[logs.len() - 1] + 0.3);
    let x = |lg: f64| area.left + (lg - lo) / (hi - lo) * area.width();
    let max = n
        .relay
        .iter()
        .chain(&n.drop)
        .flatten()
        .fold(0.0, |m: f64, &v| m.max(v));
    let y = svg::y_axis(
        &mut svg,
        area,
        Ticks::from_zero(max * 1.15, 5),
        "nanoseconds per packet",
    );

    // Each measured session count is labelled; decades get a faint line, and a label
    // where it does not crowd a measured one.
    let data_x: Vec<f64> = logs.iter().map(|&lg| x(lg)).collect();
    for decade in (lo.ceil() as i32).max(0)..=(hi.floor() as i32).min(18) {
        let px = x(f64::from(decade));
        svg.line((px, area.top), (px, area.bottom), GRID, 1.0);
        if data_x.iter().all(|&dx| (dx - px).abs() > 48.0) {
            let label = format::short_count(10u64.pow(decade as u32));
            svg.text(px, area.bottom + 18.0, 11.0, Anchor::Middle, &label, MUTED);
        }
    }
    for (&px, &s) in data_x.iter().zip(&n.sessions) {
        svg.line((px, area.bottom), (px, area.bottom + 5.0), INK, 1.0);
        svg.text(
            px,
            area.bottom + 18.0,
            12.0,
            Anchor::Middle,
            &format::short_count(s),
            INK,
        );
    }

    let series = [
        ("jvpn relay", &n.relay, &n.drop, PALETTE[3]),
        ("XDP_DROP", &n.drop, &n.relay, PALETTE[0]),
    ];
    for (_, values, other, colour) in series {
        let points: Vec<((f64, f64), f64, Option<f64>)> = data_x
            .iter()
            .zip(values.iter().zip(other.iter()))
            .filter_map(|(&px, (v, o))| v.map(|v| ((px, y(v)), v, *o)))
            .collect();
        let line: Vec<(f64, f64)> = points.iter().map(|(p, _, _)| *p).collect();
        if line.len() > 1 {
            svg.polyline(&line, colour, 2.0);
        }
        for ((px, py), v, other) in points {
            svg.circle((px, py), 4.0, colour);
            // The upper series is labelled above its points, the lower one below.
            let dy = if other.is_some_and(|o| o > v) {
                18.0
            } else {
                -9.0
            };
            svg.text(
                px,
                py + dy,
                11.0,
                Anchor::Middle,
                &format!("{v:.1}"),
                colour,
            );
        }
    }
    svg::axes(&mut svg, area);
    svg::x_title(&mut svg, area, "sessions in the table (log scale)");
    // A series without a single value is left out, legend included.
    let items: Vec<(&str, String)> = series
        .iter()
        .filter(|s| s.1.iter().any(Option::is_some))
        .map(|s| (s.3, s.0.to_string()))
        .collect();
    svg::legend(&mut svg, area, &items);
    svg.finish()
}

/// A histogram of the reattach round-trip samples with p50 and p99 marked.
pub fn reattach_rtt(r: &Rtt) -> String {
    let samples = &r.samples;
    if samples.is_empty() {
        return svg::no_data(
            "Reattach round trip",
            "the run recorded no reattach round-trip samples",
        );
    }
    let title = format!(
        "Reattach round trip ({} samples)",
        format::thousands(samples.len() as f64)
    );
    let area = Area::DEFAULT;
    let mut svg = Svg::new(&title);

    // Bins: about √n of them (5..=40) of a round width. A long tail beyond twice the
    // p99 is cut at 1.5 × p99 and counted in a note, so the body stays readable.
    let (lo, max) = (samples[0], samples[samples.len() - 1]);
    let p99 = data::percentile(samples, 99.0).unwrap_or(max);
    let hi = if p99 > 0.0 && max > 2.0 * p99 {
        1.5 * p99
    } else {
        max
    };
    let target = (samples.len() as f64).sqrt().ceil().clamp(5.0, 40.0);
    let width = if hi > lo {
        svg::nice_step((hi - lo) / target)
    } else {
        svg::nice_step(lo.abs().max(1.0) * 0.05)
    };
    let start = (lo / width).floor() * width;
    let bins = ((hi - start) / width).floor().max(0.0) as usize + 1;
    let mut counts = vec![0usize; bins];
    let mut overflow = 0;
    for &s in samples {
        match counts.get_mut(((s - start) / width).floor() as usize) {
            Some(c) => *c += 1,
            None => overflow += 1,
        }
    }
    let end = start + width * bins as f64;

    let xt = Ticks::covering(start, end, 6);
    let (x0, x1) = (xt.min, xt.max());
    let x = |v: f64| area.left + (v - x0) / (x1 - x0) * area.width();
    let top = counts.iter().copied().max().unwrap_or(0) as f64 * 1.1;
    let mut yt = Ticks::from_zero(top, 5);
    if yt.step < 1.0 {
        // Counts are whole.
        yt = Ticks::covering(0.0, top.ceil().max(1.0), top.ceil().max(1.0) as usize);
    }
    let y_title = format!("samples per {} µs bin", trim(width));
    let y = svg::y_axis(&mut svg, area, yt, &y_title);
    for (i, &c) in counts.iter().enumerate() {
        if c > 0 {
            let (bx0, bx1) = (
                x(start + width * i as f64),
                x(start + width * (i + 1) as f64),
            );
            let ty = y(c as f64);
            svg.rect(
                bx0 + 0.5,
                ty,
                (bx1 - bx0 - 1.0).max(1.0),
                area.bottom - ty,
                "#8cb2d9",
            );
        }
    }
    for i in 0..xt.count {
        let px = x(xt.value(i));
        svg.line((px, area.bottom), (px, area.bottom + 5.0), INK, 1.0);
        svg.text(
            px,
            area.bottom + 18.0,
            12.0,
            Anchor::Middle,
            &xt.label(i),
            INK,
        );
    }
    // p50 labelled left of its line and p99 right of it where they fit, on separate rows.
    let marks = [
        ("p50", r.p50, PALETTE[0], 12.0, false),
        ("p99", r.p99, PALETTE[3], 28.0, true),
    ];
    for (name, value, colour, dy, right) in marks {
        let Some(v) = value.filter(|v| (x0..=x1).contains(v)) else {
            continue;
        };
        let px = x(v);
        svg.dashed((px, area.top), (px, area.bottom), colour, 2.0);
        let label = format!("{name} {}", format::micros(Some(v)));
        let w = label.chars().count() as f64 * 6.8;
        let right = if right {
            px + 5.0 + w <= svg::WIDTH
        } else {
            px - 5.0 - w < area.left
        };
        let (lx, anchor) = if right {
            (px + 5.0, Anchor::Start)
        } else {
            (px - 5.0, Anchor::End)
        };
        svg.text(lx, area.top + dy, 12.0, anchor, &label, colour);
    }
    if overflow > 0 {
        let note = format!(
            "{} sample{} ≥ {} µs not shown (max {})",
            format::thousands(overflow as f64),
            if overflow == 1 { "" } else { "s" },
            trim(end),
            format::micros(Some(max))
        );
        svg.text(area.right, area.top - 12.0, 12.0, Anchor::End, &note, MUTED);
    }
    svg::axes(&mut svg, area);
    svg::x_title(&mut svg, area, "reattach round trip (µs)");
    svg.finish()
}

/// Grouped bars: upload and download, jvpn next to wireguard-go, in Mbit/s.
pub fn tunnel(t: &Tunnel) -> String {
    const TITLE: &str = "TCP through the tunnel: jvpn vs. wireguard-go (higher is better)";
    if !t.has_data() {
        return svg::no_data(TITLE, "the run measured no tunnel throughput");
    }
    let area = Area::DEFAULT;
    let mut svg = Svg::new(TITLE);
    let series = [
        ("jvpn", &t.jvpn, PALETTE[0]),
        ("wireguard-go", &t.wireguard_go, PALETTE[1]),
    ];
    let max = series
        .iter()
        .flat_map(|s| s.1.iter().flatten())
        .fold(0.0, |m: f64, &v| m.max(v));
    let y = svg::y_axis(
        &mut svg,
        area,
        Ticks::from_zero(max * 1.1, 5),
        "megabits per second (Mbit/s)",
    );
    let groups = [
        ("upload", "client → exit"),
        ("download", "exit → client (iperf3 -R)"),
    ];
    let group = area.width() / groups.len() as f64;
    let bar = group * 0.5 / series.len() as f64;
    for (i, (name, path)) in groups.iter().enumerate() {
        let gx = area.left + group * i as f64;
        for (j, (_, values, colour)) in series.iter().enumerate() {
            let x = gx + group * 0.25 + bar * j as f64;
            let cx = x + bar / 2.0;
            match values[i] {
                Some(v) => {
                    let top = y(v).min(area.bottom);
                    svg.rect(x + 2.0, top, bar - 4.0, area.bottom - top, colour);
                    svg.text(cx, top - 4.0, 11.0, Anchor::Middle, &format!("{v:.0}"), INK);
                }
                None => svg.text(
                    cx,
                    area.bottom - 4.0,
                    11.0,
                    Anchor::Middle,
                    format::MISSING,
                    MUTED,
                ),
            }
        }
        let cx = gx + group / 2.0;
        let ratio = match t.ratio[i] {
            Some(r) => format!("{name}: jvpn / wireguard-go = {r:.2}×"),
            None => (*name).to_string(),
        };
        svg.text(cx, area.bottom + 17.0, 12.0, Anchor::Middle, &ratio, INK);
        svg.text(cx, area.bottom + 31.0, 11.0, Anchor::Middle, path, MUTED);
    }
    svg::axes(&mut svg, area);
    let items: Vec<(&str, String)> = series
        .iter()
        .map(|(name, _, colour)| (*colour, (*name).to_string()))
        .collect();
    svg::legend(&mut svg, area, &items);
    svg.finish()
}

/// Two panels of cumulative distributions over a log-scaled time axis: handshake time
/// (ms) and reattach round trip (µs), unloaded next to under the flood. A curve is a
/// fraction of all attempts, so one that failed keeps it below 1 (the legend says how
/// many did).
pub fn flood(f: &Flood) -> String {
    const TITLE: &str = "Legitimate clients unloaded and under the flood (left and up is better)";
    if !f.has_data() {
        return svg::no_data(TITLE, "the run measured no flood phase");
    }
    let mut svg = Svg::new(TITLE);
    let panels = [
        (
            Area {
                left: 70.0,
                top: 70.0,
                right: 370.0,
                bottom: 330.0,
            },
            &f.handshake_ms,
            "handshake time (ms, log scale)",
            "handshakes",
        ),
        (
            Area {
                left: 410.0,
                top: 70.0,
                right: 705.0,
                bottom: 330.0,
            },
            &f.reattach_us,
            "reattach round trip (µs, log scale)",
            "reattaches",
        ),
    ];
    let colours = [PALETTE[0], PALETTE[3]];
    let names = ["unloaded", "under the flood"];
    for (area, series, x_title, what) in panels {
        // Fractions of the attempts: grid and labels every 0.25.
        let y = |v: f64| area.bottom - v * area.height();
        for i in 0..=4 {
            let v = f64::from(i) * 0.25;
            svg.line((area.left, y(v)), (area.right, y(v)), GRID, 1.0);
            svg.text(
                area.left - 6.0,
                y(v) + 4.0,
                11.0,
                Anchor::End,
                &format!("{v:.2}"),
                INK,
            );
        }
        let all: Vec<f64> = series
            .iter()
            .flatten()
            .flatten()
            .copied()
            .filter(|v| *v > 0.0)
            .collect();
        let (lo, hi) = all.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
        let (lo, hi) = if all.is_empty() {
            (0.0, 1.0)
        } else {
            let (l, h) = (lo.log10().floor(), hi.log10().ceil());
            (l, if h > l { h } else { l + 1.0 })
        };
        let x = |v: f64| area.left + (v.max(1e-9).log10() - lo) / (hi - lo) * area.width();
        for decade in lo as i32..=hi as i32 {
            let px = area.left + (f64::from(decade) - lo) / (hi - lo) * area.width();
            svg.line((px, area.top), (px, area.bottom), GRID, 1.0);
            let v = 10f64.powi(decade);
            let label = if v >= 1000.0 {
                format::short_count(v as u64)
            } else {
                trim(v)
            };
            svg.text(px, area.bottom + 16.0, 11.0, Anchor::Middle, &label, INK);
        }
        // The legend in the lower right, where a cumulative curve leaves room.
        let shown = series.iter().filter(|s| !s.is_empty()).count();
        let mut legend_y = area.bottom - 10.0 - 16.0 * shown.saturating_sub(1) as f64;
        for (i, samples) in series.iter().enumerate() {
            let mut done: Vec<f64> = samples.iter().flatten().copied().collect();
            done.sort_by(f64::total_cmp);
            let n = samples.len();
            if n > 0 && !done.is_empty() {
                let mut points = vec![(x(done[0]), area.bottom)];
                for (k, &v) in done.iter().enumerate() {
                    let px = x(v);
                    points.push((px, y(k as f64 / n as f64)));
                    points.push((px, y((k + 1) as f64 / n as f64)));
                }
                svg.polyline(&points, colours[i], 2.0);
            }
            if n > 0 {
                let note = format!("{}: {} of {} {what}", names[i], done.len(), n);
                svg.rect(area.right - 16.0, legend_y - 9.0, 10.0, 10.0, colours[i]);
                svg.text(area.right - 22.0, legend_y, 11.0, Anchor::End, &note, INK);
                legend_y += 16.0;
            }
        }
        svg::axes(&mut svg, area);
        svg.text(
            (area.left + area.right) / 2.0,
            area.bottom + 36.0,
            12.0,
            Anchor::Middle,
            x_title,
            INK,
        );
    }
    svg.text_styled(
        16.0,
        200.0,
        12.0,
        Anchor::Middle,
        "fraction of attempts done",
        INK,
        "transform=\"rotate(-90 16 200.0)\"",
    );
    svg.finish()
}

/// A round number without trailing zeros: `20`, `2.5`, `0.05`.
fn trim(v: f64) -> String {
    let s = format!("{v:.6}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::{
        super::{
            data::tests::row,
            schema::{
                Cost, Mode, NsPerPkt as NsTable, Reattach, Results, Throughput as T, example,
            },
            xml_check,
        },
        *,
    };

    /// A run with nothing but what `f` adds.
    fn results(f: impl FnOnce(&mut Results)) -> Results {
        let mut r = example::nothing_ran();
        f(&mut r);
        r
    }

    fn ns(relay: &[(u64, f64)], drop: &[(u64, f64)]) -> Option<Cost> {
        Some(Cost {
            ns_per_pkt: NsTable {
                relay: relay.iter().copied().collect(),
                drop: drop.iter().copied().collect(),
                ..NsTable::default()
            },
            ..Cost::default()
        })
    }

    fn rtts(samples: &[f64]) -> Option<Reattach> {
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        Some(Reattach {
            reattach_rtt_us_p50: data::percentile(&sorted, 50.0).unwrap(),
            reattach_rtt_us_p99: data::percentile(&sorted, 99.0).unwrap(),
            reattach_rtt_us: samples.to_vec(),
            ..Reattach::default()
        })
    }

    #[test]
    fn plots_are_xml_and_show_their_data() {
        let v = results(|r| {
            r.throughput = Some(T {
                pps: vec![
                    row(Mode::Drop, 64, 106, 7.1e6),
                    row(Mode::Relay1k, 1400, 1442, 1.25e6),
                ],
                ..T::default()
            });
            r.cost = ns(&[(1000, 40.1), (1_000_000, 45.0)], &[(1000, 26.0)]);
            r.reattach = rtts(&[470.0, 480.0, 481.0, 490.0, 900.0, 100_000.0]);
        });
        let mut tail = v.clone();
        let mut samples: Vec<f64> = (0..200).map(|i| f64::from(470 + i % 21)).collect();
        samples.push(100_000.0);
        tail.reattach = rtts(&samples);
        let pps = pps(&Throughput::read(&v));
        xml_check::check(&pps).unwrap();
        assert!(pps.contains(">7.10<") && pps.contains(">1.25<"));
        assert!(pps.contains("64 B payload (106 B frame)"));
        let ns_doc = ns_per_pkt(&NsPerPkt::read(&v));
        xml_check::check(&ns_doc).unwrap();
        assert!(ns_doc.contains(">40.1<") && ns_doc.contains(">1M<") && ns_doc.contains(">1k<"));
        assert!(ns_doc.contains(">XDP_DROP<"));
        let relay_only = results(|r| r.cost = ns(&[(1000, 40.1)], &[]));
        let ns_doc = ns_per_pkt(&NsPerPkt::read(&relay_only));
        xml_check::check(&ns_doc).unwrap();
        assert!(
            ns_doc.contains(">jvpn relay<") && !ns_doc.contains(">XDP_DROP<"),
            "{ns_doc}"
        );
        let rtt = reattach_rtt(&Rtt::read(&v));
        xml_check::check(&rtt).unwrap();
        assert!(rtt.contains("6 samples"), "{rtt}");
        assert!(rtt.contains("p50 481.0 µs"), "{rtt}");
        // Six samples: the p99 is the maximum, nothing is cut.
        assert!(
            rtt.contains("p99 100000.0 µs") && !rtt.contains("not shown"),
            "{rtt}"
        );
        let tun = tunnel(&Tunnel::read(&results(|r| {
            let mut t = example::results().tunnel.unwrap();
            t.tunnel_over_wireguard_go_up = None;
            t.wireguard_go_down_mbps = 650.0;
            r.tunnel = Some(t);
        })));
        xml_check::check(&tun).unwrap();
        assert!(tun.contains(">2100<") && tun.contains(">650<"), "{tun}");
        assert!(tun.contains("upload: jvpn / wireguard-go = 3.00×"), "{tun}");
        // The runner's ratio wins over the medians'.
        assert!(
            tun.contains("download: jvpn / wireguard-go = 3.00×"),
            "{tun}"
        );
        let rtt = reattach_rtt(&Rtt::read(&tail));
        xml_check::check(&rtt).unwrap();
        assert!(
            rtt.contains("1 sample ≥ 740 µs not shown (max 100000.0 µs)"),
            "{rtt}"
        );
    }

    #[test]
    fn odd_inputs_still_draw() {
        let flood_with = |hs: Vec<Option<f64>>, unloaded_ra: Vec<Option<f64>>| {
            results(|r| {
                let mut f = example::results().flood.unwrap();
                f.under_flood.handshake_ms = hs;
                f.under_flood.reattach_rtt_us = Vec::new();
                f.unloaded.handshake_ms = Vec::new();
                f.unloaded.reattach_rtt_us = unloaded_ra;
                r.flood = Some(f);
            })
        };
        let zero_tunnel = results(|r| {
            let mut t = example::results().tunnel.unwrap();
            t.tunnel_up_mbps = 0.0;
            t.wireguard_go_up_mbps = 0.0;
            t.tunnel_over_wireguard_go_up = None;
            r.tunnel = Some(t);
        });
        for (what, v) in [
            ("nothing", results(|_| {})),
            ("one sample", results(|r| r.reattach = rtts(&[5.0]))),
            ("zeros", results(|r| r.reattach = rtts(&[0.0, 0.0, 0.0]))),
            ("negative", results(|r| r.reattach = rtts(&[-3.0, 2.0]))),
            ("0 sessions", results(|r| r.cost = ns(&[(0, 1.0)], &[]))),
            ("0 ns", results(|r| r.cost = ns(&[], &[(1000, 0.0)]))),
            (
                "0 pps",
                results(|r| {
                    r.throughput = Some(T {
                        pps: vec![row(Mode::Drop, 64, 106, 0.0)],
                        ..T::default()
                    })
                }),
            ),
            ("0 Mbit/s", zero_tunnel),
            (
                "no handshake done",
                flood_with(vec![None, None], Vec::new()),
            ),
            (
                "a 0 ms handshake",
                flood_with(vec![Some(0.0), Some(5.0)], vec![Some(7.0)]),
            ),
        ] {
            for doc in [
                pps(&Throughput::read(&v)),
                ns_per_pkt(&NsPerPkt::read(&v)),
                reattach_rtt(&Rtt::read(&v)),
                tunnel(&Tunnel::read(&v)),
                flood(&Flood::read(&v)),
            ] {
                xml_check::check(&doc).unwrap_or_else(|e| panic!("{what}: {e}\n{doc}"));
                assert!(
                    !doc.contains("NaN") && !doc.contains("inf\""),
                    "{what}: {doc}"
                );
            }
        }
        assert!(reattach_rtt(&Rtt::read(&results(|_| {}))).contains("no data"));
    }

    #[test]
    fn the_flood_plot_shows_both_windows() {
        let doc = flood(&Flood::read(&results(|r| {
            let mut f = example::results().flood.unwrap();
            f.under_flood.handshake_ms = vec![Some(1.5), None, Some(150.0)];
            f.unloaded.handshake_ms = vec![Some(1.2), Some(1.4)];
            f.under_flood.reattach_rtt_us = vec![Some(1300.0), Some(70_000.0)];
            f.unloaded.reattach_rtt_us = Vec::new();
            r.flood = Some(f);
        })));
        xml_check::check(&doc).unwrap();
        assert!(doc.contains("under the flood: 2 of 3 handshakes"), "{doc}");
        assert!(doc.contains("unloaded: 2 of 2 handshakes"), "{doc}");
        assert!(doc.contains("under the flood: 2 of 2 reattaches"), "{doc}");
        assert!(doc.contains(">1k<") && doc.contains(">100k<"), "{doc}");
        assert!(flood(&Flood::read(&results(|_| {}))).contains("no data"));
    }

    #[test]
    fn trims() {
        assert_eq!(trim(20.0), "20");
        assert_eq!(trim(2.5), "2.5");
        assert_eq!(trim(0.05), "0.05");
    }
}
