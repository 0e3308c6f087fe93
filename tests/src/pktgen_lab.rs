//! Two namespaces joined by a veth pair, for the traffic generator: `pg0` in the
//! generator's namespace, `pk0` in the peer's. Each end has one receive queue per
//! sending CPU (so two sending CPUs never share a ring), and the peer has addresses
//! in case a test hands frames to its stack. Removed on drop.

use std::process::{Command, Output};

use crate::{
    netns::{Netns, veth_queues},
    unique,
};

pub const GEN_IF: &str = "pg0";
pub const PEER_IF: &str = "pk0";
pub const GEN_V4: &str = "10.201.0.1";
pub const PEER_V4: &str = "10.201.0.2";
pub const GEN_V6: &str = "fd00:201::1";
pub const PEER_V6: &str = "fd00:201::2";

pub struct Pair {
    pub generator: Netns,
    pub peer: Netns,
    /// The CPUs the generator sends from (at most two).
    pub cpus: Vec<usize>,
}

/// CPUs this process may use, at most two.
pub fn test_cpus() -> Vec<usize> {
    let mut cpus = jvpn_ctl::bench::cpus::allowed().expect("CPU affinity");
    cpus.truncate(2);
    cpus
}

impl Pair {
    pub fn new(tag: &str) -> Self {
        let generator = Netns::new(unique(&format!("{tag}g"))).unwrap();
        let peer = Netns::new(unique(&format!("{tag}p"))).unwrap();
        let cpus = test_cpus();
        // One receive queue per sending CPU: a veth picks the ring by CPU.
        veth_queues(&generator, GEN_IF, &peer, PEER_IF, cpus.len()).unwrap();
        for (ns, dev, a4, a6) in [
            (&generator, GEN_IF, GEN_V4, GEN_V6),
            (&peer, PEER_IF, PEER_V4, PEER_V6),
        ] {
            ns.ip(&["addr", "add", &format!("{a4}/24"), "dev", dev])
                .unwrap();
            ns.ip(&["addr", "add", &format!("{a6}/64"), "dev", dev, "nodad"])
                .unwrap();
            ns.ip(&["link", "set", dev, "up"]).unwrap();
        }
        Self {
            generator,
            peer,
            cpus,
        }
    }

    pub fn cpu_list(&self) -> String {
        self.cpus
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn peer_mac(&self) -> String {
        self.peer.mac_str(PEER_IF).unwrap()
    }

    /// `jvpn-ctl ARGS` in the generator's namespace (nsenter, as an operator would).
    pub fn jvpn_ctl(&self) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.generator.name))
            .arg(crate::gwlab::jvpn_ctl_bin());
        cmd
    }

    /// `jvpn-ctl pktgen` from `pg0` to the peer with `extra` arguments; v6 selects
    /// the IPv6 addresses.
    pub fn pktgen(&self, v6: bool, extra: &[&str]) -> Output {
        let (src, dst) = if v6 {
            (GEN_V6, PEER_V6)
        } else {
            (GEN_V4, PEER_V4)
        };
        let mac = self.peer_mac();
        self.jvpn_ctl()
            .args([
                "pktgen",
                "--iface",
                GEN_IF,
                "--src",
                src,
                "--dst",
                dst,
                "--dst-mac",
                &mac,
            ])
            .args(extra)
            .output()
            .unwrap()
    }
}

/// The JSON summary `pktgen --json` prints as the last line of stdout; panics with the
/// output if the run failed.
pub fn summary(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "pktgen failed: {}\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("no JSON summary ({e}): {stdout}"))
}
