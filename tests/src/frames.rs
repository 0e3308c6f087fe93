//! Frames built, and checksums verified, by etherparse: an implementation independent
//! of the relay's own header code, so a bug there cannot hide in both.

use std::net::IpAddr;

use etherparse::{
    EtherType, Ethernet2Header, IpDscp, IpEcn, IpNumber, Ipv4Header, Ipv4Options, Ipv6Header,
    SingleVlanHeader, UdpHeader, VlanId,
};
use jvpn_common::wire::WireHeader;

/// Everything about a UDP frame except its payload.
#[derive(Clone, Debug)]
pub struct Udp {
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    pub vlan: Option<u16>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub tos: u8,
    pub ttl: u8,
    /// IPv4 only: header options (multiple of 4 bytes).
    pub ipv4_options: Vec<u8>,
    pub ipv4_id: u16,
    pub dont_fragment: bool,
    /// IPv4 only: send "no checksum" (0).
    pub no_udp_checksum: bool,
}

impl Udp {
    pub fn new(src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Self {
        Self {
            smac: [0x02, 0, 0, 0, 0xaa, 0x01],
            dmac: [0x02, 0, 0, 0, 0xbb, 0x01],
            vlan: None,
            src,
            dst,
            sport,
            dport,
            tos: 0,
            ttl: 61,
            ipv4_options: Vec::new(),
            ipv4_id: 0x1234,
            dont_fragment: false,
            no_udp_checksum: false,
        }
    }

    /// What the relay must emit for a packet it sends from `src` to `dst`.
    pub fn relayed(
        smac: [u8; 6],
        dmac: [u8; 6],
        src: IpAddr,
        sport: u16,
        dst: IpAddr,
        dport: u16,
        tos: u8,
    ) -> Self {
        Self {
            smac,
            dmac,
            tos,
            ttl: jvpn_common::headers::RELAY_TTL,
            ipv4_id: 0,
            dont_fragment: true,
            ..Self::new(src, sport, dst, dport)
        }
    }

    pub fn build(&self, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let ip_type = if self.src.is_ipv4() {
            EtherType::IPV4
        } else {
            EtherType::IPV6
        };
        let eth_type = if self.vlan.is_some() {
            EtherType::VLAN_TAGGED_FRAME
        } else {
            ip_type
        };
        Ethernet2Header {
            source: self.smac,
            destination: self.dmac,
            ether_type: eth_type,
        }
        .write(&mut out)
        .unwrap();
        if let Some(id) = self.vlan {
            SingleVlanHeader {
                pcp: Default::default(),
                drop_eligible_indicator: false,
                vlan_id: VlanId::try_new(id).unwrap(),
                ether_type: ip_type,
            }
            .write(&mut out)
            .unwrap();
        }
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let mut ip = Ipv4Header::new(
                    (8 + payload.len()) as u16,
                    self.ttl,
                    IpNumber::UDP,
                    s.octets(),
                    d.octets(),
                )
                .unwrap();
                ip.dscp = IpDscp::try_new(self.tos >> 2).unwrap();
                ip.ecn = IpEcn::try_new(self.tos & 3).unwrap();
                ip.identification = self.ipv4_id;
                ip.dont_fragment = self.dont_fragment;
                ip.options = Ipv4Options::try_from(&self.ipv4_options[..]).unwrap();
                ip.total_len = (ip.header_len() + 8 + payload.len()) as u16;
                ip.header_checksum = ip.calc_header_checksum();
                let mut udp =
                    UdpHeader::with_ipv4_checksum(self.sport, self.dport, &ip, payload).unwrap();
                if self.no_udp_checksum {
                    udp.checksum = 0;
                }
                ip.write(&mut out).unwrap();
                udp.write(&mut out).unwrap();
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let ip = Ipv6Header {
                    traffic_class: self.tos,
                    flow_label: Default::default(),
                    payload_length: (8 + payload.len()) as u16,
                    next_header: IpNumber::UDP,
                    hop_limit: self.ttl,
                    source: s.octets(),
                    destination: d.octets(),
                };
                let udp =
                    UdpHeader::with_ipv6_checksum(self.sport, self.dport, &ip, payload).unwrap();
                ip.write(&mut out).unwrap();
                udp.write(&mut out).unwrap();
            }
            _ => panic!("mixed address families in one header"),
        }
        out.extend_from_slice(payload);
        out
    }
}

/// A jvpn message: the 20-byte header and `body_len` bytes of recognisable filler.
pub fn jvpn(msg_type: u8, session_id: u64, counter: u64, body_len: usize) -> Vec<u8> {
    let mut p = WireHeader::new(msg_type, session_id, counter)
        .to_bytes()
        .to_vec();
    p.extend((0..body_len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(7)));
    p
}

/// Checks the IPv4 header checksum and the UDP checksum of an Ethernet frame with
/// etherparse, and returns the UDP payload.
pub fn verify_checksums(frame: &[u8]) -> Vec<u8> {
    let sliced = etherparse::SlicedPacket::from_ethernet(frame).expect("frame parses");
    let Some(etherparse::TransportSlice::Udp(udp)) = sliced.transport else {
        panic!("not UDP");
    };
    let payload = udp.payload();
    let header = udp.to_header();
    match sliced.net.expect("has IP") {
        etherparse::NetSlice::Ipv4(ip) => {
            let h = ip.header().to_header();
            assert_eq!(
                h.header_checksum,
                h.calc_header_checksum(),
                "IPv4 header checksum"
            );
            if header.checksum != 0 {
                assert_eq!(
                    header.checksum,
                    header.calc_checksum_ipv4(&h, payload).unwrap(),
                    "UDP checksum over IPv4"
                );
            }
        }
        etherparse::NetSlice::Ipv6(ip) => {
            let h = ip.header().to_header();
            assert_ne!(header.checksum, 0, "IPv6 UDP must carry a checksum");
            assert_eq!(
                header.checksum,
                header.calc_checksum_ipv6(&h, payload).unwrap(),
                "UDP checksum over IPv6"
            );
        }
        _ => panic!("not IP"),
    }
    payload.to_vec()
}
