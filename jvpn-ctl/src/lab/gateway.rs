//! The three-namespace lab of DESIGN §8: a client with two transports (wifi, lte), a
//! gateway, and an exit.
//!
//! ```text
//! client: c-wifi 10.77.1.2/24 ── g-wifi 10.77.1.1/24 :gateway
//!         c-lte  10.77.2.2/24 ── g-lte  10.77.2.1/24
//!                fd77:2::2/64      fd77:2::1/64       (the IPv6 transport)
//! gateway: g-exit 10.77.9.1/24 ── x-gw  10.77.9.2/24 :exit
//! ```

use std::{
    io::Result,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4},
};

use jvpn_common::maps::{Endpoint, FLAG_FORWARDING, SessionEntry};

use super::{
    netns::{Netns, PinDir, veth},
    unique,
};

/// The gateway's jvpn port, the exit's port, and the client's source port.
pub const PORT: u16 = jvpn_common::DEFAULT_PORT;
pub const EXIT_PORT: u16 = 51821;
pub const CLIENT_PORT: u16 = 40000;

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

pub struct GatewayLab {
    pub client: Netns,
    pub gw: Netns,
    pub exit: Netns,
    /// A pin directory for the gateway's data plane, removed with the lab.
    pub pins: PinDir,
}

impl GatewayLab {
    /// Builds the lab; `tag` (a few letters) makes its names recognisable.
    pub fn build(tag: &str) -> Result<Self> {
        let lab = Self {
            client: Netns::new(unique(&format!("{tag}c")))?,
            gw: Netns::new(unique(&format!("{tag}g")))?,
            exit: Netns::new(unique(&format!("{tag}x")))?,
            pins: PinDir::new(tag),
        };
        veth(&lab.client, "c-wifi", &lab.gw, "g-wifi")?;
        veth(&lab.client, "c-lte", &lab.gw, "g-lte")?;
        veth(&lab.gw, "g-exit", &lab.exit, "x-gw")?;
        for (ns, dev, addr) in [
            (&lab.client, "c-wifi", "10.77.1.2/24"),
            (&lab.gw, "g-wifi", "10.77.1.1/24"),
            (&lab.client, "c-lte", "10.77.2.2/24"),
            (&lab.gw, "g-lte", "10.77.2.1/24"),
            (&lab.gw, "g-exit", "10.77.9.1/24"),
            (&lab.exit, "x-gw", "10.77.9.2/24"),
        ] {
            ns.ip(&["addr", "add", addr, "dev", dev])?;
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
        for (ns, dev) in [
            (&lab.client, "c-wifi"),
            (&lab.client, "c-lte"),
            (&lab.exit, "x-gw"),
        ] {
            ns.exec("ethtool", &["-K", dev, "tx", "off"])?;
        }
        // In production the controller's own traffic resolves the gateway's neighbours
        // (the relay hands unresolved ones to the kernel); here they are fixed up front.
        for (addr, peer, peer_dev, dev) in [
            ("10.77.1.2", &lab.client, "c-wifi", "g-wifi"),
            ("10.77.2.2", &lab.client, "c-lte", "g-lte"),
            ("fd77:2::2", &lab.client, "c-lte", "g-lte"),
            ("10.77.9.2", &lab.exit, "x-gw", "g-exit"),
        ] {
            let mac = peer.mac_str(peer_dev)?;
            lab.gw.neigh_permanent(addr, &mac, dev)?;
        }
        Ok(lab)
    }

    /// Client-side and exit-side veths that receive native redirects and so need an
    /// XDP program of their own: (namespace, interface).
    pub fn redirect_targets(&self) -> [(&Netns, &'static str); 3] {
        [
            (&self.client, "c-wifi"),
            (&self.client, "c-lte"),
            (&self.exit, "x-gw"),
        ]
    }
}
