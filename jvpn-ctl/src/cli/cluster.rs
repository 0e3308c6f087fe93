//! `jvpn-ctl cluster status`: a cluster node's view of its cluster.

use clap::Subcommand;
use jvpn_ctl::control::api::{ClusterStatus, Request};

use super::sessions::{SocketArgs, millis, table};

#[derive(Subcommand)]
pub enum Command {
    /// This node's number and lease, etcd as the node last heard from it, the nodes
    /// it knows and who owns how many sessions (what the node already knows: no
    /// request to etcd). A single gateway answers with an error.
    Status {
        /// Print the status as JSON (the control API's object).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArgs,
    },
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::Status { json, socket } => {
            if let Some(s) = socket.query::<ClusterStatus>(&Request::ClusterStatus, json)? {
                print!("{}", render(&s));
            }
            Ok(())
        }
    }
}

fn render(s: &ClusterStatus) -> String {
    let mut lines: Vec<(&str, String)> = Vec::new();
    let l = &s.lease;
    let lease = if l.id == 0 {
        "none (not granted yet, or the last one expired)".to_owned()
    } else {
        format!("{:x}, TTL {}s, term {}", l.id, l.ttl_s, l.term)
    };
    lines.push(("lease", lease));
    let live = if l.live {
        format!(
            "yes, {} left until this node's own deadline",
            millis(l.left_ms)
        )
    } else {
        "NO: past this node's deadline; reattaches here are denied ownership_ambiguous".to_owned()
    };
    lines.push(("live", live));
    let e = &s.etcd;
    let answered = match e.last_answer_ms_ago {
        Some(ms) => format!("last answer {} ago", millis(ms)),
        None => "no answer yet".to_owned(),
    };
    let reachable = if e.reachable {
        "reachable"
    } else {
        "UNREACHABLE"
    };
    lines.push(("etcd", format!("{reachable} ({answered})")));
    lines.push(("endpoints", e.endpoints.join(", ")));
    let mut seen = Vec::new();
    if let Some(r) = e.revision {
        seen.push(format!("revision {r}"));
    }
    if let Some(m) = e.member_id {
        seen.push(format!("member {m:x}"));
    }
    if let Some(t) = e.raft_term {
        seen.push(format!("raft term {t}"));
    }
    if !seen.is_empty() {
        lines.push(("seen", seen.join(", ")));
    }
    let error = match (&e.last_error, e.last_error_ms_ago) {
        (Some(err), Some(ms)) => format!("{} ago: {err}", millis(ms)),
        (Some(err), None) => err.clone(),
        (None, _) => "none".to_owned(),
    };
    lines.push(("last error", error));
    let ss = &s.sessions;
    let mut sessions = format!(
        "{} owned here, {} of other nodes admitted",
        ss.owned, ss.foreign
    );
    if ss.unowned > 0 {
        sessions.push_str(&format!(" ({} with no owner)", ss.unowned));
    }
    lines.push(("sessions", sessions));
    let changes: Vec<String> = s
        .ownership
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    lines.push((
        "ownership",
        format!("{} (changes since the start)", changes.join(", ")),
    ));

    let mut out = format!("node {} of the cluster at {}\n", s.node, s.root);
    for (k, v) in lines {
        out.push_str(&format!("{:<11} {v}\n", format!("{k}:")));
    }
    out.push('\n');
    let mut rows: Vec<Vec<String>> = s
        .nodes
        .iter()
        .map(|n| {
            let mut about = n.about.clone().unwrap_or_else(|| "-".into());
            if n.node == s.node {
                about = format!("(this node) {about}");
            }
            vec![
                n.node.to_string(),
                if n.announced { "yes" } else { "no" }.into(),
                n.sessions.to_string(),
                about,
            ]
        })
        .collect();
    if ss.unowned > 0 {
        rows.push(vec![
            "-".into(),
            "-".into(),
            ss.unowned.to_string(),
            "(no owner: its lease ran out, not taken over yet)".into(),
        ]);
    }
    out.push_str(&table(
        &["NODE", "ANNOUNCED", "SESSIONS", "ABOUT"],
        &[true, false, true, false],
        &rows,
    ));
    out
}

#[cfg(test)]
mod tests {
    use jvpn_ctl::control::api::{
        ClusterSessions, ClusterStatus, EtcdHealth, LeaseStatus, NodeStatus,
    };

    use super::*;

    fn sample() -> ClusterStatus {
        ClusterStatus {
            node: 1,
            root: "/jvpn/v1/".into(),
            lease: LeaseStatus {
                id: 0x694d_7e3f_1a2b_3c4d,
                ttl_s: 3,
                left_ms: 2_400,
                live: true,
                term: 1,
            },
            etcd: EtcdHealth {
                endpoints: vec!["http://10.0.0.5:2379".into(), "http://10.0.0.6:2379".into()],
                reachable: true,
                last_answer_ms_ago: Some(120),
                last_error: Some("keep-alive: no answer within 750ms".into()),
                last_error_ms_ago: Some(12_300),
                revision: Some(57),
                member_id: Some(0x8e9e_05c5_2164_694d),
                raft_term: Some(2),
            },
            nodes: vec![
                NodeStatus {
                    node: 1,
                    announced: true,
                    about: Some("pid=7 port=51820".into()),
                    sessions: 3,
                },
                NodeStatus {
                    node: 12,
                    announced: false,
                    about: None,
                    sessions: 4,
                },
            ],
            sessions: ClusterSessions {
                owned: 3,
                foreign: 5,
                unowned: 1,
            },
            ownership: [("acquired".to_owned(), 4), ("lost".to_owned(), 0)].into(),
        }
    }

    #[test]
    fn status_layout() {
        assert_eq!(
            render(&sample()),
            "node 1 of the cluster at /jvpn/v1/\n\
             lease:      694d7e3f1a2b3c4d, TTL 3s, term 1\n\
             live:       yes, 2.4s left until this node's own deadline\n\
             etcd:       reachable (last answer 120ms ago)\n\
             endpoints:  http://10.0.0.5:2379, http://10.0.0.6:2379\n\
             seen:       revision 57, member 8e9e05c52164694d, raft term 2\n\
             last error: 12.3s ago: keep-alive: no answer within 750ms\n\
             sessions:   3 owned here, 5 of other nodes admitted (1 with no owner)\n\
             ownership:  acquired 4, lost 0 (changes since the start)\n\
             \n\
             NODE  ANNOUNCED  SESSIONS  ABOUT\n   \
                1  yes               3  (this node) pid=7 port=51820\n  \
               12  no                4  -\n   \
                -  -                 1  (no owner: its lease ran out, not taken over yet)\n"
        );
    }

    #[test]
    fn status_without_lease_or_etcd() {
        let mut s = sample();
        s.lease = LeaseStatus::default();
        s.etcd = EtcdHealth {
            endpoints: vec!["http://10.0.0.5:2379".into()],
            ..EtcdHealth::default()
        };
        s.sessions.unowned = 0;
        let text = render(&s);
        for want in [
            "lease:      none (not granted yet, or the last one expired)\n",
            "live:       NO: past this node's deadline; reattaches here are denied \
             ownership_ambiguous\n",
            "etcd:       UNREACHABLE (no answer yet)\n",
            "last error: none\n",
            "sessions:   3 owned here, 5 of other nodes admitted\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        assert!(!text.contains("seen:"), "{text}");
        assert!(!text.contains("no owner"), "{text}");
    }
}
