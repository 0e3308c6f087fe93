//! Checks on tunnel prefixes shared by the gateway's pool and the exit's addresses.

use ipnet::IpNet;

/// IPv6 ranges whose addresses stand for IPv4 ones: IPv4-mapped and the deprecated
/// IPv4-compatible. An IPv6 tunnel prefix there would overlap the IPv4 pool.
const IPV4_ALIASES: [&str; 2] = ["::ffff:0:0/96", "::/96"];

/// The IPv4-aliasing range `net` overlaps, if any.
pub fn ipv4_alias(net: IpNet) -> Option<&'static str> {
    IPV4_ALIASES.into_iter().find(|a| {
        let a: IpNet = a.parse().expect("a valid prefix");
        a.contains(&net.network()) || net.contains(&a.network())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases() {
        let p = |s: &str| s.parse::<IpNet>().unwrap();
        assert_eq!(ipv4_alias(p("::ffff:10.99.0.0/120")), Some("::ffff:0:0/96"));
        assert_eq!(
            ipv4_alias(p("::/64")),
            Some("::ffff:0:0/96"),
            "::/64 holds both"
        );
        assert_eq!(ipv4_alias(p("::/100")), Some("::/96"));
        assert_eq!(ipv4_alias(p("::ffff:0:0/80")), Some("::ffff:0:0/96"));
        assert_eq!(ipv4_alias(p("fd00:99::/64")), None);
        assert_eq!(ipv4_alias(p("2001:db8::/32")), None);
    }
}
