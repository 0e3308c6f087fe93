//! The inner (tunnelled) packet: just enough of its IP header to route it and to check
//! who sent it (the exit, and the client before it seals). The kernel validates the
//! rest when the packet enters the TUN device.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Source and destination of an IPv4 or IPv6 packet; `None` if `pkt` is neither (or
/// too short to hold its header).
pub fn addrs(pkt: &[u8]) -> Option<(IpAddr, IpAddr)> {
    match pkt.first()? >> 4 {
        4 => {
            let ihl = usize::from(pkt[0] & 0x0f) * 4;
            if ihl < 20 || pkt.len() < ihl {
                return None;
            }
            let a =
                |o: usize| IpAddr::V4(Ipv4Addr::new(pkt[o], pkt[o + 1], pkt[o + 2], pkt[o + 3]));
            Some((a(12), a(16)))
        }
        6 => {
            if pkt.len() < 40 {
                return None;
            }
            let a = |o: usize| {
                let b: [u8; 16] = pkt[o..o + 16].try_into().expect("16 bytes");
                IpAddr::V6(Ipv6Addr::from(b))
            };
            Some((a(8), a(24)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_and_ipv6() {
        let mut v4 = [0u8; 28];
        v4[0] = 0x45;
        v4[12..16].copy_from_slice(&[10, 99, 0, 2]);
        v4[16..20].copy_from_slice(&[10, 99, 0, 1]);
        assert_eq!(
            addrs(&v4),
            Some(("10.99.0.2".parse().unwrap(), "10.99.0.1".parse().unwrap()))
        );
        assert_eq!(addrs(&v4[..19]), None);
        v4[0] = 0x44;
        assert_eq!(addrs(&v4), None, "IHL below 5");
        v4[0] = 0x4f;
        assert_eq!(addrs(&v4), None, "IHL beyond the packet");

        let mut v6 = [0u8; 40];
        v6[0] = 0x60;
        v6[23] = 2;
        v6[39] = 1;
        assert_eq!(
            addrs(&v6),
            Some(("::2".parse().unwrap(), "::1".parse().unwrap()))
        );
        assert_eq!(addrs(&v6[..39]), None);
        assert_eq!(addrs(&[]), None);
        assert_eq!(addrs(&[0x50; 60]), None);
    }
}
