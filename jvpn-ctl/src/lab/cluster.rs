//! The cluster lab's network: a client, two gateway nodes and the exit, each in its
//! own namespace, on two switched LANs (bridges in a fifth namespace), so that one
//! client transport reaches both nodes and both nodes reach the exit:
//!
//! ```text
//! client 10.78.1.2 ─┐ br-c ┌─ 10.78.1.1 node A 10.78.9.1 ─┐ br-x ┌─ 10.78.9.2 exit (+ etcd)
//!                   ├──────┼─ 10.78.1.3 node B 10.78.9.3 ─┼──────┤
//!                   └──────┴─ 10.78.1.5 node C 10.78.9.5 ─┴──────┘  (if asked for)
//! ```
//!
//! etcd runs in the exit's namespace on 10.78.9.2, reached by every node over the
//! exit LAN, so a node is cut off from etcd by an nftables rule in its own namespace.

use std::{
    io::Result,
    net::{Ipv4Addr, SocketAddr},
};

use super::{
    netns::{Netns, PinDir, veth},
    unique,
};

pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 78, 1, 2);
pub const EXIT: Ipv4Addr = Ipv4Addr::new(10, 78, 9, 2);
/// The client agent's transport binds this port.
pub const CLIENT_PORT: u16 = 40000;
pub const PORT: u16 = jvpn_common::DEFAULT_PORT;

/// One gateway node of the lab.
pub struct Node {
    pub ns: Netns,
    pub number: u16,
    /// Its address on the client LAN and on the exit LAN.
    pub client_side: Ipv4Addr,
    pub exit_side: Ipv4Addr,
    pub pins: PinDir,
}

impl Node {
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((self.client_side, PORT))
    }

    /// Its interfaces (for `interfaces = [...]`).
    pub fn interfaces(&self) -> [String; 2] {
        let p = self.prefix();
        [format!("{p}-c"), format!("{p}-x")]
    }

    fn prefix(&self) -> char {
        (b'a' + (self.number - 1) as u8) as char
    }
}

pub struct ClusterLab {
    pub client: Netns,
    pub exit: Netns,
    pub switch: Netns,
    pub nodes: Vec<Node>,
}

/// At most this many nodes: their tunnel pools (10.99.n-1.0/24) stay below the
/// exit's own 10.99.3.0/24.
pub const MAX_NODES: u16 = 3;

impl ClusterLab {
    /// The lab with `nodes` gateway nodes (1 to [`MAX_NODES`]).
    pub fn build(tag: &str, nodes: u16) -> Result<Self> {
        if !(1..=MAX_NODES).contains(&nodes) {
            return Err(std::io::Error::other(format!(
                "the cluster lab has 1 to {MAX_NODES} nodes, not {nodes}"
            )));
        }
        let lab = Self {
            client: Netns::new(unique(&format!("{tag}c")))?,
            exit: Netns::new(unique(&format!("{tag}x")))?,
            switch: Netns::new(unique(&format!("{tag}s")))?,
            nodes: (1..=nodes)
                .map(|n| {
                    let host = (2 * n - 1) as u8;
                    Ok(Node {
                        ns: Netns::new(unique(&format!("{tag}{n}")))?,
                        number: n,
                        client_side: Ipv4Addr::new(10, 78, 1, host),
                        exit_side: Ipv4Addr::new(10, 78, 9, host),
                        pins: PinDir::new(&format!("{tag}{n}")),
                    })
                })
                .collect::<Result<_>>()?,
        };
        let sw = &lab.switch;
        for br in ["br-c", "br-x"] {
            sw.ip(&["link", "add", br, "type", "bridge"])?;
            sw.ip(&["link", "set", br, "up"])?;
        }
        let mut ports = vec![
            (
                &lab.client,
                "c-lan".to_string(),
                "s-c".to_string(),
                "br-c",
                CLIENT,
            ),
            (
                &lab.exit,
                "x-lan".to_string(),
                "s-x".to_string(),
                "br-x",
                EXIT,
            ),
        ];
        for n in &lab.nodes {
            let p = n.prefix();
            ports.push((
                &n.ns,
                format!("{p}-c"),
                format!("s-{p}c"),
                "br-c",
                n.client_side,
            ));
            ports.push((
                &n.ns,
                format!("{p}-x"),
                format!("s-{p}x"),
                "br-x",
                n.exit_side,
            ));
        }
        for (ns, dev, port, br, addr) in &ports {
            veth(ns, dev, sw, port)?;
            sw.ip(&["link", "set", port, "master", br])?;
            ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", dev])?;
        }
        // Locally sent packets leave a veth with a partial checksum (TX offload) that
        // only the kernel's forwarding path completes; XDP sees the frame as it is.
        for (ns, dev) in [(&lab.client, "c-lan"), (&lab.exit, "x-lan")] {
            ns.exec("ethtool", &["-K", dev, "tx", "off"])?;
        }
        // The relay hands unresolved neighbours to the kernel; fixed up front here,
        // as in the single-gateway lab.
        let client_mac = lab.client.mac_str("c-lan")?;
        let exit_mac = lab.exit.mac_str("x-lan")?;
        for n in &lab.nodes {
            let [c, x] = n.interfaces();
            n.ns.neigh_permanent(&CLIENT.to_string(), &client_mac, &c)?;
            n.ns.neigh_permanent(&EXIT.to_string(), &exit_mac, &x)?;
        }
        Ok(lab)
    }

    pub fn namespaces(&self) -> Vec<&Netns> {
        let mut all = vec![&self.client, &self.exit, &self.switch];
        all.extend(self.nodes.iter().map(|n| &n.ns));
        all
    }

    /// The client's UDP from [`CLIENT_PORT`] leaves with source port `port` from now
    /// on (`None`: unmapped again), as behind a NAT whose mapping moved: the gateway
    /// sees a new binding. A stateless nftables rewrite in the client's namespace
    /// (the source port on the way out, the destination port back on the way in,
    /// what still arrives for the unmapped port dropped, as a NAT drops it), so the
    /// move is atomic with the next packet. (A conntrack SNAT plus a flush is not:
    /// a packet from the gateway arriving first after the flush creates an entry
    /// without the mapping, or one that clashes with it, and the client keeps its
    /// old port or cannot send at all.)
    pub fn rebind_client(&self, port: Option<u16>) -> Result<()> {
        let script = match port {
            Some(p) => format!(
                "add table ip jvpn_rebind; delete table ip jvpn_rebind; add table ip jvpn_rebind; \
                 add chain ip jvpn_rebind out {{ type filter hook output priority -300; }}; \
                 add rule ip jvpn_rebind out ip saddr {CLIENT} udp sport {CLIENT_PORT} \
                 notrack udp sport set {p}; \
                 add chain ip jvpn_rebind pre {{ type filter hook prerouting priority -300; }}; \
                 add rule ip jvpn_rebind pre ip daddr {CLIENT} udp dport {CLIENT_PORT} drop; \
                 add rule ip jvpn_rebind pre ip daddr {CLIENT} udp dport {p} \
                 notrack udp dport set {CLIENT_PORT}"
            ),
            None => "add table ip jvpn_rebind; delete table ip jvpn_rebind".to_string(),
        };
        self.client.exec("nft", &[&script])?;
        Ok(())
    }

    /// Drops (or, `false`, allows again) node `n`'s traffic to etcd (every member:
    /// all TCP to the exit's address, where only etcd listens; the link and DATA are
    /// UDP), both ways: nftables rules in its own namespace, so etcd and the other
    /// nodes are untouched. Established connections stall as in a real partition
    /// (with only the way out dropped, etcd's watch events would still get in).
    pub fn cut_from_etcd(&self, n: usize, cut: bool) -> Result<()> {
        let ns = &self.nodes[n].ns;
        if cut {
            ns.exec(
                "nft",
                &[&format!(
                    "add table inet jvpn_cut; add chain inet jvpn_cut out \
                     {{ type filter hook output priority 0; policy accept; }}; \
                     add rule inet jvpn_cut out ip daddr {EXIT} meta l4proto tcp drop; \
                     add chain inet jvpn_cut in \
                     {{ type filter hook input priority 0; policy accept; }}; \
                     add rule inet jvpn_cut in ip saddr {EXIT} meta l4proto tcp drop"
                )],
            )?;
        } else {
            ns.exec("nft", &["delete table inet jvpn_cut"])?;
        }
        Ok(())
    }
}
