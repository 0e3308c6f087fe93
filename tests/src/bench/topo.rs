//! The benchmark path: generator namespace → veth → gateway namespace (the program
//! under test) → veth → sink namespace (`xdp_sink`, counts and drops). Every veth end
//! has one queue per CPU, so sending CPUs never share a ring. Removed on drop (the
//! namespaces take their veths with them), also when a phase fails or the run is
//! interrupted.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use anyhow::{Context as _, Result};
use jvpn_ctl::lab::netns::{Netns, veth_queues};

use crate::unique;

pub const GEN_IF: &str = "bgen0";
pub const GW_IN: &str = "bgwin";
pub const GW_OUT: &str = "bgwout";
pub const SINK_IF: &str = "bsink0";

pub const GEN_IP: Ipv4Addr = Ipv4Addr::new(10, 210, 0, 1);
pub const GW_IN_IP: Ipv4Addr = Ipv4Addr::new(10, 210, 0, 2);
pub const GW_OUT_IP: Ipv4Addr = Ipv4Addr::new(10, 211, 0, 1);
/// The exit (throughput) and the swap's binding A.
pub const SINK_IP: Ipv4Addr = Ipv4Addr::new(10, 211, 0, 2);
/// The swap's binding B.
pub const SINK_IP_B: Ipv4Addr = Ipv4Addr::new(10, 211, 0, 3);

/// The gateway's jvpn port, the exit's, and the first client source port.
pub const GW_PORT: u16 = 51820;
pub const EXIT_PORT: u16 = 51821;
pub const CLIENT_PORT: u16 = 40000;

pub fn v4(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(ip, port))
}

pub struct Topology {
    pub gen_ns: Netns,
    pub gw: Netns,
    pub sink: Netns,
    pub gen_mac: [u8; 6],
    pub gw_in_mac: [u8; 6],
    pub sink_mac: [u8; 6],
}

impl Topology {
    pub fn build(queues: usize) -> Result<Self> {
        let gen_ns = Netns::new(unique("jbg"))?;
        let gw = Netns::new(unique("jbw"))?;
        let sink = Netns::new(unique("jbs"))?;
        for (a, ns_a, b, ns_b) in [(GEN_IF, &gen_ns, GW_IN, &gw), (GW_OUT, &gw, SINK_IF, &sink)] {
            veth_queues(ns_a, a, ns_b, b, queues)
                .with_context(|| format!("creating veth {a}/{b}"))?;
        }
        let addr = |ns: &Netns, dev: &str, a: Ipv4Addr| -> Result<()> {
            ns.ip(&["addr", "add", &format!("{a}/24"), "dev", dev])?;
            Ok(())
        };
        addr(&gen_ns, GEN_IF, GEN_IP)?;
        addr(&gw, GW_IN, GW_IN_IP)?;
        addr(&gw, GW_OUT, GW_OUT_IP)?;
        addr(&sink, SINK_IF, SINK_IP)?;
        addr(&sink, SINK_IF, SINK_IP_B)?;
        for (ns, dev) in [
            (&gen_ns, GEN_IF),
            (&gw, GW_IN),
            (&gw, GW_OUT),
            (&sink, SINK_IF),
        ] {
            ns.ip(&["link", "set", dev, "up"])?;
        }
        let topo = Self {
            gen_mac: gen_ns.mac(GEN_IF)?,
            gw_in_mac: gw.mac(GW_IN)?,
            sink_mac: sink.mac(SINK_IF)?,
            gen_ns,
            gw,
            sink,
        };
        // Permanent neighbours: no ARP on the measured path, and the relay's FIB
        // lookup always finds its next hop.
        let mac = |m: &[u8; 6]| jvpn_ctl::bench::netif::format_mac(m);
        for (dst, dev, m) in [
            (SINK_IP, GW_OUT, &topo.sink_mac),
            (SINK_IP_B, GW_OUT, &topo.sink_mac),
            (GEN_IP, GW_IN, &topo.gen_mac),
        ] {
            topo.gw.neigh_permanent(&dst.to_string(), &mac(m), dev)?;
        }
        topo.gen_ns
            .neigh_permanent(&GW_IN_IP.to_string(), &mac(&topo.gw_in_mac), GEN_IF)?;
        topo.gw.sysctl("net.ipv4.ip_forward", "1")?;
        Ok(topo)
    }

    pub fn netns_path(ns: &Netns) -> std::path::PathBuf {
        std::path::PathBuf::from(format!("/run/netns/{}", ns.name))
    }
}
