//! The three-namespace lab of DESIGN §8: a client with two transports (wifi, lte), a
//! gateway, and an exit; optionally ([`LabOptions::nat`]) a fourth namespace, a NAT
//! router, on the Wi-Fi path.
//!
//! ```text
//! client: c-wifi 10.77.1.2/24 ── g-wifi 10.77.1.1/24 :gateway
//!         c-lte  10.77.2.2/24 ── g-lte  10.77.2.1/24   (MTU 1400)
//!                fd77:2::2/64      fd77:2::1/64       (the IPv6 transport, MTU 1280)
//! gateway: g-exit 10.77.9.1/24 ── x-gw  10.77.9.2/24 :exit
//!
//! with NAT, Wi-Fi instead goes through the router (SNAT to 10.77.1.2:50000, …):
//! client: c-wifi 10.77.11.2/24 ── r-c 10.77.11.1/24 :router: r-g 10.77.1.2/24 ── g-wifi
//! ```

use std::{
    io::{Error, Result},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4},
    process::Command,
    sync::Mutex,
};

use jvpn_common::maps::{Endpoint, FLAG_FORWARDING, SessionEntry};

use crate::datapath::{AttachMode, Datapath, DatapathConfig, PASS_PROGRAM};

use super::{
    netns::{Netns, PinDir, veth},
    unique,
};

/// The gateway's jvpn port, the exit's port, and the client's source port.
pub const PORT: u16 = jvpn_common::DEFAULT_PORT;
pub const EXIT_PORT: u16 = 51821;
pub const CLIENT_PORT: u16 = 40000;

/// The LTE link's MTU (both ends), ordinary for cellular, and the IPv6 MTU on it (the
/// IPv6 minimum).
pub const LTE_MTU: u32 = 1400;
pub const LTE6_MTU: u32 = 1280;

/// With NAT: the client's Wi-Fi address behind the router, the router's address on
/// the client's side (the client's next hop), its public address on the gateway's
/// side, and the first port it maps the client's UDP to (then 50001, 50002, … after
/// each [`Nat::rebind`]).
pub const NAT_CLIENT: Ipv4Addr = Ipv4Addr::new(10, 77, 11, 2);
pub const NAT_INSIDE: Ipv4Addr = Ipv4Addr::new(10, 77, 11, 1);
pub const NAT_PUBLIC: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 2);
pub const NAT_FIRST_PORT: u16 = 50000;

const EXIT: [u8; 4] = [10, 77, 9, 2];
const GW_EXIT: [u8; 4] = [10, 77, 9, 1];

fn sa(a: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(a), port))
}

/// One of the client's transports: Wi-Fi, and LTE over IPv4 or IPv6 (one link).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Wifi,
    Lte,
    Lte6,
}

const LTE6_CLIENT: Ipv6Addr = Ipv6Addr::new(0xfd77, 2, 0, 0, 0, 0, 0, 2);
const LTE6_GW: Ipv6Addr = Ipv6Addr::new(0xfd77, 2, 0, 0, 0, 0, 0, 1);

impl Transport {
    pub const ALL: [Transport; 3] = [Transport::Wifi, Transport::Lte, Transport::Lte6];

    /// (client address, gateway address) on this link.
    fn ips(self) -> (IpAddr, IpAddr) {
        match self {
            Self::Wifi => ([10, 77, 1, 2].into(), [10, 77, 1, 1].into()),
            Self::Lte => ([10, 77, 2, 2].into(), [10, 77, 2, 1].into()),
            Self::Lte6 => (LTE6_CLIENT.into(), LTE6_GW.into()),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Wifi => "wifi",
            Self::Lte => "lte",
            Self::Lte6 => "lte6",
        }
    }

    /// The client-side interface this transport leaves through.
    pub fn client_dev(self) -> &'static str {
        match self {
            Self::Wifi => "c-wifi",
            Self::Lte | Self::Lte6 => "c-lte",
        }
    }

    /// Where the client sends from on this link (its binding when bound here).
    pub fn client_addr(self) -> SocketAddr {
        SocketAddr::new(self.ips().0, CLIENT_PORT)
    }

    /// The gateway's jvpn socket address on this link.
    pub fn gw_addr(self) -> SocketAddr {
        SocketAddr::new(self.ips().1, PORT)
    }
}

/// The exit's socket, and the gateway's address toward it.
pub fn exit_addr() -> SocketAddr {
    sa(EXIT, EXIT_PORT)
}

pub fn gw_exit_addr() -> SocketAddr {
    sa(GW_EXIT, PORT)
}

/// The forwarding entry of a session whose client is bound on `t`.
pub fn session_entry(t: Transport, generation: u32) -> SessionEntry {
    SessionEntry {
        generation,
        flags: FLAG_FORWARDING,
        client: Endpoint::from(t.client_addr()),
        gw_client: Endpoint::from(t.gw_addr()),
        exit: Endpoint::v4(EXIT, EXIT_PORT),
        gw_exit: Endpoint::v4(GW_EXIT, PORT),
        ..Default::default()
    }
}

/// How to build a [`GatewayLab`]; the default is the plain three-namespace lab.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LabOptions {
    /// Put a NAT router between the client's Wi-Fi and the gateway.
    pub nat: bool,
}

/// The nftables table and chain of the router's SNAT rule.
const NAT_TABLE: &str = "ip jvpn_nat";
const NAT_CHAIN: &str = "post";

/// The NAT router on the Wi-Fi path: its namespace (removed with it) and the port it
/// currently maps the client's UDP to (one mapping, as a strict consumer NAT with one
/// flow).
pub struct Nat {
    pub router: Netns,
    port: Mutex<u16>,
}

impl Nat {
    /// The client's Wi-Fi address as the gateway sees it now: 10.77.1.2:port.
    pub fn binding(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(NAT_PUBLIC, *self.lock()))
    }

    /// Moves the mapping the way a NAT reboot or an expired mapping does: the SNAT
    /// rule now maps to the next port, and every UDP mapping the router holds is
    /// forgotten, so the client's next datagram leaves from the new port and replies
    /// to the old one no longer reach the client. Returns the new binding.
    pub fn rebind(&self) -> Result<SocketAddr> {
        let mut port = self.lock();
        let next = port
            .checked_add(1)
            .ok_or_else(|| Error::other("NAT ports exhausted"))?;
        // The rule first: a datagram between the two steps still finds its old
        // mapping; one after the flush is mapped by the new rule (the other order
        // could re-create the old mapping in between).
        self.map_to(next)?;
        *port = next;
        self.flush_mappings()?;
        Ok(SocketAddr::V4(SocketAddrV4::new(NAT_PUBLIC, next)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, u16> {
        self.port.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the chain's rules in one nft transaction: the client's UDP leaving
    /// toward the gateway is mapped to `NAT_PUBLIC:port`, anything else to
    /// `NAT_PUBLIC` (the gateway has no route to the client's subnet).
    fn map_to(&self, port: u16) -> Result<()> {
        let m = format!("oifname \"r-g\" ip saddr {NAT_CLIENT}/24");
        let script = format!(
            "flush chain {NAT_TABLE} {NAT_CHAIN}; \
             add rule {NAT_TABLE} {NAT_CHAIN} {m} meta l4proto udp snat to {NAT_PUBLIC}:{port}; \
             add rule {NAT_TABLE} {NAT_CHAIN} {m} snat to {NAT_PUBLIC}"
        );
        self.router.exec("nft", &[&script]).map(drop)
    }

    fn flush_mappings(&self) -> Result<()> {
        flush_udp_conntrack(&self.router)
    }
}

/// `conntrack -D -p udp` in `ns`: every UDP mapping forgotten, so the next datagram
/// is mapped by the rules as they are now; exit code 1 with "0 flow entries" is
/// "there was nothing to delete".
pub(super) fn flush_udp_conntrack(ns: &Netns) -> Result<()> {
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .args(["conntrack", "-D", "-p", "udp"])
        .output()
        .map_err(|e| Error::new(e.kind(), format!("spawning conntrack: {e}")))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() || (out.status.code() == Some(1) && stderr.contains(" 0 flow entries"))
    {
        Ok(())
    } else {
        Err(Error::other(format!(
            "conntrack -D -p udp in {} failed ({}): {}",
            ns.name,
            out.status,
            stderr.trim()
        )))
    }
}

/// In `ns`: `addr` is permanently at the MAC of `peer`'s `peer_dev`, on `dev`.
fn neigh(ns: &Netns, addr: &str, peer: &Netns, peer_dev: &str, dev: &str) -> Result<()> {
    ns.neigh_permanent(addr, &peer.mac_str(peer_dev)?, dev)
}

pub struct GatewayLab {
    pub client: Netns,
    pub gw: Netns,
    pub exit: Netns,
    /// The NAT router on the Wi-Fi path, if built with [`LabOptions::nat`].
    pub nat: Option<Nat>,
    /// A pin directory for the gateway's data plane, removed with the lab.
    pub pins: PinDir,
}

impl GatewayLab {
    /// Builds the lab without NAT; `tag` (a few letters) makes its names recognisable.
    pub fn build(tag: &str) -> Result<Self> {
        Self::build_with(tag, LabOptions::default())
    }

    /// Builds the lab as `opts` asks.
    pub fn build_with(tag: &str, opts: LabOptions) -> Result<Self> {
        let lab = Self {
            client: Netns::new(unique(&format!("{tag}c")))?,
            gw: Netns::new(unique(&format!("{tag}g")))?,
            exit: Netns::new(unique(&format!("{tag}x")))?,
            nat: if opts.nat {
                Some(Nat {
                    router: Netns::new(unique(&format!("{tag}r")))?,
                    port: Mutex::new(NAT_FIRST_PORT),
                })
            } else {
                None
            },
            pins: PinDir::new(tag),
        };
        if let Some(nat) = &lab.nat {
            let r = &nat.router;
            veth(&lab.client, "c-wifi", r, "r-c")?;
            veth(r, "r-g", &lab.gw, "g-wifi")?;
            for (ns, dev, addr) in [
                (&lab.client, "c-wifi", NAT_CLIENT),
                (r, "r-c", NAT_INSIDE),
                (r, "r-g", NAT_PUBLIC),
            ] {
                ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", dev])?;
            }
            let via = NAT_INSIDE.to_string();
            lab.client
                .ip(&["route", "add", "10.77.1.0/24", "via", &via, "dev", "c-wifi"])?;
            r.sysctl("net.ipv4.ip_forward", "1")?;
            r.exec(
                "nft",
                &[&format!(
                    "add table {NAT_TABLE}; add chain {NAT_TABLE} {NAT_CHAIN} \
                     {{ type nat hook postrouting priority srcnat; policy accept; }}"
                )],
            )?;
            nat.map_to(NAT_FIRST_PORT)?;
            // The router's neighbours are fixed up front like the gateway's (below);
            // the client resolves its next hop, the router, by ARP.
            neigh(r, "10.77.1.1", &lab.gw, "g-wifi", "r-g")?;
            neigh(r, &NAT_CLIENT.to_string(), &lab.client, "c-wifi", "r-c")?;
        } else {
            veth(&lab.client, "c-wifi", &lab.gw, "g-wifi")?;
        }
        veth(&lab.client, "c-lte", &lab.gw, "g-lte")?;
        veth(&lab.gw, "g-exit", &lab.exit, "x-gw")?;
        let wifi_client = if lab.nat.is_some() {
            None
        } else {
            Some((&lab.client, "c-wifi", "10.77.1.2/24"))
        };
        for (ns, dev, addr) in wifi_client.into_iter().chain([
            (&lab.gw, "g-wifi", "10.77.1.1/24"),
            (&lab.client, "c-lte", "10.77.2.2/24"),
            (&lab.gw, "g-lte", "10.77.2.1/24"),
            (&lab.gw, "g-exit", "10.77.9.1/24"),
            (&lab.exit, "x-gw", "10.77.9.2/24"),
        ]) {
            ns.ip(&["addr", "add", addr, "dev", dev])?;
        }
        // The LTE link's MTU, then its IPv6 MTU: changing the link MTU resets the
        // IPv6 one to it, so the order matters (a link down/up keeps both).
        for (ns, dev) in [(&lab.client, "c-lte"), (&lab.gw, "g-lte")] {
            ns.ip(&["link", "set", dev, "mtu", &LTE_MTU.to_string()])?;
            ns.sysctl(&format!("net.ipv6.conf.{dev}.mtu"), &LTE6_MTU.to_string())?;
        }
        // No duplicate address detection: the addresses are usable at once, also
        // after the link has been down and up again.
        for (ns, addr) in [(&lab.client, "fd77:2::2/64"), (&lab.gw, "fd77:2::1/64")] {
            let dev = if ns.name == lab.client.name {
                "c-lte"
            } else {
                "g-lte"
            };
            ns.ip(&["-6", "addr", "add", addr, "dev", dev, "nodad"])?;
        }
        // Locally sent packets leave a veth with a partial checksum (TX offload) that
        // only the kernel's forwarding path completes; XDP sees the frame as it is. A
        // remote host's packets always carry full checksums, so the senders compute them.
        // (A forwarded packet keeps the sender's checksum, so behind the router it is
        // still c-wifi that matters; r-g covers the router's own packets.)
        let router_tx = lab.nat.as_ref().map(|n| (&n.router, "r-g"));
        for (ns, dev) in [
            (&lab.client, "c-wifi"),
            (&lab.client, "c-lte"),
            (&lab.exit, "x-gw"),
        ]
        .into_iter()
        .chain(router_tx)
        {
            ns.exec("ethtool", &["-K", dev, "tx", "off"])?;
        }
        // In production the controller's own traffic resolves the gateway's neighbours
        // (the relay hands unresolved ones to the kernel); here they are fixed up front.
        // Behind the NAT, the gateway's neighbour 10.77.1.2 is the router.
        let wifi_peer = match &lab.nat {
            Some(n) => (&n.router, "r-g"),
            None => (&lab.client, "c-wifi"),
        };
        for (addr, (peer, peer_dev), dev) in [
            ("10.77.1.2", wifi_peer, "g-wifi"),
            ("10.77.2.2", (&lab.client, "c-lte"), "g-lte"),
            ("fd77:2::2", (&lab.client, "c-lte"), "g-lte"),
            ("10.77.9.2", (&lab.exit, "x-gw"), "g-exit"),
        ] {
            neigh(&lab.gw, addr, peer, peer_dev, dev)?;
        }
        Ok(lab)
    }

    /// Every namespace of the lab (the router's last, if there is one).
    pub fn namespaces(&self) -> Vec<&Netns> {
        let mut all = vec![&self.client, &self.gw, &self.exit];
        all.extend(self.nat.as_ref().map(|n| &n.router));
        all
    }

    /// Where the client sends from on `t` (its own address: behind the NAT, Wi-Fi's
    /// is 10.77.11.2:40000).
    pub fn client_addr(&self, t: Transport) -> SocketAddr {
        match (&self.nat, t) {
            (Some(_), Transport::Wifi) => {
                SocketAddr::V4(SocketAddrV4::new(NAT_CLIENT, CLIENT_PORT))
            }
            _ => t.client_addr(),
        }
    }

    /// The client's address on `t` as the gateway sees it (its binding when bound
    /// there): behind the NAT, Wi-Fi's is the current mapping.
    pub fn binding(&self, t: Transport) -> SocketAddr {
        match (&self.nat, t) {
            (Some(n), Transport::Wifi) => n.binding(),
            _ => t.client_addr(),
        }
    }

    /// The NAT's current mapping of the client's Wi-Fi (10.77.1.2:port); `None`
    /// without NAT.
    pub fn nat_binding(&self) -> Option<SocketAddr> {
        self.nat.as_ref().map(Nat::binding)
    }

    /// Drops `pct` % (at random, nftables `numgen`) of what transport `t` sends to
    /// the gateway, in the client's namespace; 100 also drops what comes back (a
    /// black hole with the link up). Replaces any earlier rule; 0 removes it.
    pub fn lossy(&self, t: Transport, pct: u32) -> Result<()> {
        let ns = &self.client;
        let _ = ns.exec("nft", &["delete table inet jvpn_loss"]);
        if pct == 0 {
            return Ok(());
        }
        let (dev, port) = (t.client_dev(), t.gw_addr().port());
        let (back, random) = if pct >= 100 {
            (
                format!("add rule inet jvpn_loss in iifname \"{dev}\" udp sport {port} drop\n"),
                String::new(),
            )
        } else {
            (String::new(), format!("numgen random mod 100 < {pct} "))
        };
        let script = format!(
            "add table inet jvpn_loss\n\
             add chain inet jvpn_loss out {{ type filter hook output priority 0; }}\n\
             add chain inet jvpn_loss in {{ type filter hook input priority 0; }}\n\
             add rule inet jvpn_loss out oifname \"{dev}\" udp dport {port} \
             {random}counter drop\n{back}"
        );
        ns.exec("nft", &[&script]).map(drop)
    }

    /// [`Nat::rebind`]; an error without NAT.
    pub fn rebind(&self) -> Result<SocketAddr> {
        self.nat
            .as_ref()
            .ok_or_else(|| {
                Error::other("this lab has no NAT (build it with LabOptions { nat: true })")
            })?
            .rebind()
    }

    /// Like [`session_entry`], with the client's address as the gateway sees it.
    pub fn session_entry(&self, t: Transport, generation: u32) -> SessionEntry {
        SessionEntry {
            client: Endpoint::from(self.binding(t)),
            ..session_entry(t, generation)
        }
    }

    /// Veths that receive the gateway's native redirects toward the client and the
    /// exit, and so need an XDP program of their own: (namespace, interface). Behind
    /// the NAT, Wi-Fi's is the router's `r-g`.
    pub fn redirect_targets(&self) -> [(&Netns, &'static str); 3] {
        [
            match &self.nat {
                Some(n) => (&n.router, "r-g"),
                None => (&self.client, "c-wifi"),
            },
            (&self.client, "c-lte"),
            (&self.exit, "x-gw"),
        ]
    }

    /// The relay on the gateway's three interfaces (their attach modes, in that
    /// order) with room for `max_sessions`, and `xdp_pass` on the redirect targets,
    /// unpinned: gone with the returned [`Datapath`].
    pub fn relay(&self, max_sessions: u32) -> Result<(Datapath, [AttachMode; 3])> {
        let mut dp = self.gw.run(|| -> Result<_> {
            let mut dp = Datapath::load(DatapathConfig {
                pin_dir: self.pins.0.clone(),
                max_sessions,
                ..DatapathConfig::default()
            })
            .map_err(Error::other)?;
            let mut modes = [AttachMode::Native; 3];
            for (m, dev) in modes.iter_mut().zip(GW_DEVS) {
                *m = dp.attach(dev, AttachMode::Native).map_err(Error::other)?;
            }
            Ok((dp, modes))
        })?;
        for (ns, dev) in self.redirect_targets() {
            ns.run(|| dp.0.attach_unpinned(PASS_PROGRAM, dev, AttachMode::Native))
                .map_err(Error::other)?;
        }
        Ok(dp)
    }
}

/// The gateway's interfaces the relay runs on: Wi-Fi, LTE, exit.
pub const GW_DEVS: [&str; 3] = ["g-wifi", "g-lte", "g-exit"];
