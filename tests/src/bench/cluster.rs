//! The reattach round trip in a cluster: two gateway nodes (real `jvpn-ctl gateway`
//! processes) on a real etcd, the exit and the real client agent, in namespaces
//! (`jvpn_ctl::lab::cluster_stack`). The client's NAT mapping moves again and again
//! (`ClusterLab::rebind_client`: a new source port, then the old one back), so the
//! agent reattaches at the node it is bound through: the same node, whose commit is
//! a CAS transaction on the session's record at etcd (two per reattach: the
//! REQUEST's and the CONFIRM's). A packet capture on the client's interface times
//! each REATTACH_REQUEST leaving to its REATTACH_ACK arriving, as the `reattach`
//! phase does in the single-gateway lab with the local store; the report puts the
//! two side by side.

use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use jvpn_ctl::{
    lab::{
        capture::Capture,
        cluster::CLIENT_PORT,
        cluster_stack::{ClusterOptions, ClusterStack},
    },
    session::State,
};

use super::{
    Bench, percentile,
    progress::Phase,
    schema::{Cluster, ClusterSetup},
    stopped,
};

/// The client's interface in its namespace (the cluster lab's one transport).
const CLIENT_DEV: &str = "c-lan";

pub fn reattach_rtt(b: &mut Bench) -> Result<()> {
    let moves = b.profile.cluster_moves;
    let phase = Phase::new("cluster", moves as u64);
    phase.say("starting etcd, two gateway nodes, the exit and the client agent");
    let bin = std::panic::catch_unwind(crate::gwlab::jvpn_ctl_bin)
        .map_err(|_| anyhow!("jvpn-ctl is not next to jvpn-bench"))?;
    let opts = ClusterOptions {
        policy:
            "keepalive_interval_ms = 100\ntransport_loss_ttl_ms = 500\nidle_loss_ttl_ms = 500\n\
                 candidate_ttl_ms = 1000\nmax_recovery_window_ms = 20000\n\
                 max_switches_per_minute = 100000\n"
                .into(),
        ..ClusterOptions::default()
    };
    let mut s = ClusterStack::start("bcl", &std::env::temp_dir(), &bin, opts)
        .context("starting the cluster stack")?;
    let r = measure(&mut s, moves, &phase);
    if r.is_err() {
        eprintln!("{}", s.logs());
    }
    let (rtts, node1_gen, node2_holds) = r?;
    let stats = summary(&rtts);
    b.out.cluster = Some(Cluster {
        cluster_reattach_rtt_us: rounded(&rtts),
        cluster_reattach_rtt_us_min: stats.min,
        cluster_reattach_rtt_us_p50: stats.p50,
        cluster_reattach_rtt_us_p90: stats.p90,
        cluster_reattach_rtt_us_max: stats.max,
        cluster_reattach_setup: ClusterSetup {
            nodes: 2,
            etcd_members: 1,
            lease_ttl_s: s.opts.lease_ttl_s,
            moves,
            samples: rtts.len(),
            owner_generation_after: node1_gen,
            other_node_holds_it: node2_holds,
        },
    });
    phase.done(format!(
        "{} exchanges at the owner node: min {:.0} µs, p50 {:.0} µs, p90 {:.0} µs, max {:.0} µs \
         (request out → ACK in, captured at the client)",
        rtts.len(),
        stats.min,
        stats.p50,
        stats.p90,
        stats.max,
    ));
    Ok(())
}

/// min, median, p90 and max of samples, rounded to µs.
pub struct Summary {
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub max: f64,
}

/// The [`Summary`] of ascending samples.
pub fn summary(sorted: &[f64]) -> Summary {
    Summary {
        min: sorted[0].round(),
        p50: percentile(sorted, 0.5).round(),
        p90: percentile(sorted, 0.9).round(),
        max: sorted[sorted.len() - 1].round(),
    }
}

/// Samples rounded to whole µs, as the results keep them.
pub fn rounded(sorted: &[f64]) -> Vec<f64> {
    sorted.iter().map(|v| v.round()).collect()
}

/// The round trips (µs, ascending), node 1's generation of the session at the end,
/// and whether node 2 ever held it.
fn measure(s: &mut ClusterStack, moves: usize, phase: &Phase) -> Result<(Vec<f64>, u32, bool)> {
    s.start_client("")?;
    let node1 = s.lab.nodes[0].addr().to_string();
    s.wait(
        "the client ATTACHED through node 1",
        Duration::from_secs(20),
        || {
            s.client_status().is_some_and(|c| {
                c.state == State::Attached
                    && c.reattach.is_none()
                    && c.bound_gateway.as_deref() == Some(node1.as_str())
            })
        },
    )?;
    let st = s
        .client_status()
        .context("the client agent does not answer")?;
    let id = st.session_id.context("no session")?.0;
    let cap = Capture::start(&s.lab.client, CLIENT_DEV)?;
    let mut generation = st.generation;
    let mut node2_holds = false;
    for i in 0..moves {
        stopped()?;
        // A new source port, then the original one again: each a move of the
        // client's address as the gateway sees it.
        let port = (i % 2 == 0).then_some(CLIENT_PORT + 1);
        s.lab.rebind_client(port)?;
        let want = generation + 1;
        s.wait(
            &format!("reattach {} (generation {want}) through node 1", i + 1),
            Duration::from_secs(10),
            || {
                s.client_status().is_some_and(|c| {
                    c.state == State::Attached
                        && c.reattach.is_none()
                        && c.generation >= want
                        && c.bound_gateway.as_deref() == Some(node1.as_str())
                })
            },
        )?;
        generation = s.client_status().map_or(want, |c| c.generation);
        node2_holds |= s.session(1, id).is_some();
        phase.step();
    }
    s.lab.rebind_client(None)?;
    std::thread::sleep(Duration::from_millis(50));
    let on1 = s
        .session(0, id)
        .context("node 1 no longer holds the session")?;
    ensure!(
        on1.generation == generation,
        "node 1 holds generation {}, the client {generation}",
        on1.generation
    );
    let mut rtts = super::reattach_rtts_us(&cap.frames());
    if rtts.len() < moves * 9 / 10 {
        bail!(
            "only {} of {moves} reattach exchanges were captured",
            rtts.len()
        );
    }
    rtts.sort_by(f64::total_cmp);
    Ok((rtts, on1.generation, node2_holds))
}
