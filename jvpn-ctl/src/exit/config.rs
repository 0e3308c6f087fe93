//! Exit configuration: a flat TOML file, then command-line overrides, then validation.
//!
//! Unknown keys and invalid values are errors that name the key; a missing required
//! key is an error too. The exit refuses to start rather than guess.

use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use serde::Deserialize;

use crate::{proto, tun};

pub const DEFAULT_TUN_NAME: &str = "jvpn-exit0";

/// The file as written, every key optional so that flags can fill or override it.
/// [`ConfigFile::resolve`] turns it into a checked [`Config`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// DATA socket (from and to the gateway's relay), e.g. `10.77.9.2:51821`.
    pub listen: Option<SocketAddr>,
    /// Link socket (key delivery from the gateway), e.g. `10.77.9.2:51822`.
    pub link_listen: Option<SocketAddr>,
    /// Pre-shared link key: 64 hex characters.
    pub link_key_file: Option<PathBuf>,
    /// TUN device name; default `jvpn-exit0`.
    pub tun_name: Option<String>,
    /// The exit's own tunnel address with the prefix of the tunnel pool it routes,
    /// e.g. `10.99.0.1/24`.
    pub tun_addr: Option<IpNet>,
    /// Dual stack: the exit's own IPv6 tunnel address with the prefix of the IPv6
    /// pool (the gateway's `pool.cidr6`), e.g. `fd00:99::1/64`, beside an IPv4
    /// `tun_addr`.
    pub tun_addr6: Option<IpNet>,
    /// TUN MTU; default [`tun::DEFAULT_MTU`].
    pub mtu: Option<u32>,
    /// Egress: masquerade the clients out of an interface (`[nat]`, `nat.rs`).
    pub nat: Option<super::nat::NatConfig>,
}

/// A checked configuration, with the link key loaded.
#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    pub listen: SocketAddr,
    pub link_listen: SocketAddr,
    pub link_key: [u8; 32],
    pub tun_name: String,
    pub tun_addr: IpNet,
    pub tun_addr6: Option<IpNet>,
    pub mtu: u32,
    /// `[nat]` with its prefixes filled in (the tunnel's by default).
    pub nat: Option<super::nat::NatConfig>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("link_listen", &self.link_listen)
            .field("link_key", &"<redacted>")
            .field("tun_name", &self.tun_name)
            .field("tun_addr", &self.tun_addr)
            .field("tun_addr6", &self.tun_addr6)
            .field("mtu", &self.mtu)
            .field("nat", &self.nat)
            .finish()
    }
}

/// Messages include their cause (no `source`, so `{:#}` does not repeat it).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    File(#[from] crate::toml_file::TomlError),
    #[error("{key}: missing (set it in the config file or with --{flag})")]
    Missing { key: &'static str, flag: String },
    #[error("{key}: {problem}")]
    Invalid { key: &'static str, problem: String },
    #[error("link_key_file: {0}")]
    LinkKey(proto::ProtoError),
}

fn invalid(key: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        problem: problem.into(),
    }
}

fn need<T>(v: Option<T>, key: &'static str) -> Result<T, ConfigError> {
    v.ok_or_else(|| ConfigError::Missing {
        key,
        flag: key.replace('_', "-"),
    })
}

impl ConfigFile {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Ok(crate::toml_file::load(path)?)
    }

    /// Parses TOML; the messages name the offending key and line.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        Ok(crate::toml_file::parse(text)?)
    }

    /// Keys set in `over` replace those in `self`.
    pub fn merge(self, over: ConfigFile) -> ConfigFile {
        ConfigFile {
            listen: over.listen.or(self.listen),
            link_listen: over.link_listen.or(self.link_listen),
            link_key_file: over.link_key_file.or(self.link_key_file),
            tun_name: over.tun_name.or(self.tun_name),
            tun_addr: over.tun_addr.or(self.tun_addr),
            tun_addr6: over.tun_addr6.or(self.tun_addr6),
            mtu: over.mtu.or(self.mtu),
            nat: over.nat.or(self.nat),
        }
    }

    /// Fills defaults, checks every value and loads the link key.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let listen = need(self.listen, "listen")?;
        let link_listen = need(self.link_listen, "link_listen")?;
        let key_path = need(self.link_key_file, "link_key_file")?;
        let tun_addr = need(self.tun_addr, "tun_addr")?;
        // Check the cheap things before touching the key file.
        let mut config = Config {
            listen,
            link_listen,
            link_key: [0; 32],
            tun_name: self.tun_name.unwrap_or_else(|| DEFAULT_TUN_NAME.into()),
            tun_addr,
            tun_addr6: self.tun_addr6,
            mtu: self.mtu.unwrap_or(tun::DEFAULT_MTU),
            nat: self.nat.map(|n| with_prefixes(n, tun_addr, self.tun_addr6)),
        };
        config.validate()?;
        config.link_key = proto::link::load_link_key(&key_path).map_err(ConfigError::LinkKey)?;
        Ok(config)
    }
}

/// `[nat]` with its default: the tunnel's prefixes.
fn with_prefixes(
    mut n: super::nat::NatConfig,
    tun_addr: IpNet,
    tun_addr6: Option<IpNet>,
) -> super::nat::NatConfig {
    if n.prefixes.is_empty() {
        n.prefixes = std::iter::once(tun_addr)
            .chain(tun_addr6)
            .map(|a| a.trunc())
            .collect();
    }
    n
}

/// The checks each of the exit's own tunnel addresses passes.
fn check_tun_addr(key: &'static str, a: IpNet) -> Result<(), ConfigError> {
    if a.max_prefix_len() - a.prefix_len() < 2 {
        return Err(invalid(
            key,
            format!("{a}: the prefix is the client pool and needs room for clients (/30 or wider)"),
        ));
    }
    if a.addr() == a.network() || (a.addr().is_ipv4() && a.addr() == a.broadcast()) {
        return Err(invalid(
            key,
            format!("{a}: the exit's own address must be a host address of the prefix"),
        ));
    }
    if a.addr().is_unspecified() || a.addr().is_multicast() || a.addr().is_loopback() {
        return Err(invalid(key, format!("{a}: not a unicast host address")));
    }
    Ok(())
}

impl Config {
    /// A configuration with the default TUN name and MTU.
    pub fn new(
        listen: SocketAddr,
        link_listen: SocketAddr,
        link_key: [u8; 32],
        tun_addr: IpNet,
    ) -> Self {
        Config {
            listen,
            link_listen,
            link_key,
            tun_name: DEFAULT_TUN_NAME.into(),
            tun_addr,
            tun_addr6: None,
            mtu: tun::DEFAULT_MTU,
            nat: None,
        }
    }

    /// The exit's tunnel addresses with their prefixes: `tun_addr`, then `tun_addr6`.
    pub fn tun_addrs(&self) -> impl Iterator<Item = IpNet> + '_ {
        std::iter::once(self.tun_addr).chain(self.tun_addr6)
    }

    /// Checks what serde cannot: ranges and relations between values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.listen == self.link_listen {
            return Err(invalid("link_listen", "must differ from listen"));
        }
        let n = &self.tun_name;
        if !tun::valid_name(n) {
            return Err(invalid(
                "tun_name",
                format!(
                    "{n:?} is not a valid interface name (1 to 15 bytes, no '/', ':' or spaces)"
                ),
            ));
        }
        check_tun_addr("tun_addr", self.tun_addr)?;
        if let Some(a6) = self.tun_addr6 {
            if !a6.addr().is_ipv6() || !self.tun_addr.addr().is_ipv4() {
                return Err(invalid(
                    "tun_addr6",
                    format!(
                        "{a6}: the IPv6 address beside an IPv4 tun_addr ({})",
                        self.tun_addr
                    ),
                ));
            }
            check_tun_addr("tun_addr6", a6)?;
            if let Some(alias) = crate::prefix::ipv4_alias(a6) {
                return Err(invalid(
                    "tun_addr6",
                    format!(
                        "{a6} overlaps {alias}, where IPv6 addresses stand for IPv4 ones \
                         (the IPv4 pool {})",
                        self.tun_addr.trunc()
                    ),
                ));
            }
        }
        if let Some(nat) = &self.nat {
            if !tun::valid_name(&nat.out_interface) {
                return Err(invalid(
                    "nat.out_interface",
                    format!(
                        "{:?} is not a valid interface name (1 to 15 bytes, no '/', ':' or spaces)",
                        nat.out_interface
                    ),
                ));
            }
            if nat.out_interface == self.tun_name {
                return Err(invalid(
                    "nat.out_interface",
                    "is the tunnel itself: name the interface towards the internet",
                ));
            }
            if let Some(p) = nat.prefixes.iter().find(|p| p.prefix_len() == 0) {
                return Err(invalid(
                    "nat.prefixes",
                    format!("{p}: masquerading everything is not a tunnel prefix"),
                ));
            }
        }
        // The kernel takes IPv6 off a device whose MTU is below 1280.
        let min = if self.tun_addrs().any(|a| a.addr().is_ipv6()) {
            1280
        } else {
            576
        };
        if !(min..=65535).contains(&self.mtu) {
            return Err(invalid(
                "mtu",
                format!("{} is outside {min}..=65535", self.mtu),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
listen = "10.77.9.2:51821"
link_listen = "10.77.9.2:51822"
link_key_file = "/etc/jvpn/link.key"
tun_addr = "10.99.0.1/24"
"#;

    fn resolved_without_key(f: ConfigFile) -> Result<Config, ConfigError> {
        // resolve() minus the key file: same defaults and checks.
        let c = Config {
            tun_name: f.tun_name.unwrap_or_else(|| DEFAULT_TUN_NAME.into()),
            mtu: f.mtu.unwrap_or(tun::DEFAULT_MTU),
            nat: f
                .nat
                .map(|n| with_prefixes(n, f.tun_addr.unwrap(), f.tun_addr6)),
            tun_addr6: f.tun_addr6,
            ..Config::new(
                f.listen.unwrap(),
                f.link_listen.unwrap(),
                [0; 32],
                f.tun_addr.unwrap(),
            )
        };
        c.validate().map(|()| c)
    }

    /// `tun_addr6` beside an IPv4 `tun_addr` only, a host address of a usable prefix
    /// clear of the IPv4-aliasing ranges; `[nat]` covers both prefixes by default; a
    /// dual-stack TUN needs IPv6's minimum MTU.
    #[test]
    fn the_ipv6_tunnel_address_is_checked() {
        let with = |extra: &str| {
            resolved_without_key(ConfigFile::parse(&format!("{GOOD}{extra}\n")).unwrap())
                .map_err(|e| e.to_string())
        };
        let c = with("tun_addr6 = \"fd00:99::1/64\"\n[nat]\nout_interface = \"eth0\"").unwrap();
        assert_eq!(
            c.nat.unwrap().prefixes,
            vec![
                "10.99.0.0/24".parse::<IpNet>().unwrap(),
                "fd00:99::/64".parse().unwrap()
            ]
        );
        for (extra, want) in [
            (
                "tun_addr6 = \"10.98.0.1/24\"",
                "tun_addr6: 10.98.0.1/24: the IPv6 address beside",
            ),
            (
                "tun_addr6 = \"fd00:99::/64\"",
                "tun_addr6: fd00:99::/64: the exit's own address must be a host",
            ),
            (
                "tun_addr6 = \"fd00:99::1/127\"",
                "tun_addr6: fd00:99::1/127: the prefix is the client pool",
            ),
            (
                "tun_addr6 = \"::ffff:10.99.0.1/120\"",
                "overlaps ::ffff:0:0/96",
            ),
            (
                "tun_addr6 = \"fd00:99::1/64\"\nmtu = 1200",
                "mtu: 1200 is outside 1280..=65535",
            ),
        ] {
            let e = with(extra).unwrap_err();
            assert!(e.contains(want), "{extra}: {e}");
        }
        let v6_first = GOOD.replace("10.99.0.1/24", "fd00:98::1/64");
        let e = resolved_without_key(
            ConfigFile::parse(&format!("{v6_first}tun_addr6 = \"fd00:99::1/64\"\n")).unwrap(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("beside an IPv4 tun_addr"), "{e}");
    }

    #[test]
    fn parses_with_defaults() {
        let c = resolved_without_key(ConfigFile::parse(GOOD).unwrap()).unwrap();
        assert_eq!(c.tun_name, "jvpn-exit0");
        assert_eq!(c.mtu, 1400);
        assert_eq!(c.listen, "10.77.9.2:51821".parse().unwrap());
        assert!(
            !format!("{c:?}").contains("[0, 0"),
            "key must not be printed"
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let e = ConfigFile::parse(&format!("{GOOD}tun_mtu = 1300\n")).unwrap_err();
        assert!(e.to_string().contains("tun_mtu"), "{e}");
        let e = ConfigFile::parse(&GOOD.replace("10.77.9.2:51821", "10.77.9.2")).unwrap_err();
        assert!(e.to_string().contains("listen"), "{e}");
        let e = ConfigFile::parse(&format!("{GOOD}mtu = -5\n")).unwrap_err();
        assert!(e.to_string().contains("mtu"), "{e}");
        let e = ConfigFile::parse(&GOOD.replace("/24", "/40")).unwrap_err();
        assert!(e.to_string().contains("tun_addr"), "{e}");
    }

    #[test]
    fn invalid_values_are_refused() {
        let base = ConfigFile::parse(GOOD).unwrap();
        let cases: [(ConfigFile, &str); 7] = [
            (
                ConfigFile {
                    mtu: Some(100),
                    ..base.clone()
                },
                "mtu",
            ),
            (
                ConfigFile {
                    tun_name: Some("a/b".into()),
                    ..base.clone()
                },
                "tun_name",
            ),
            (
                ConfigFile {
                    tun_name: Some("x".repeat(16)),
                    ..base.clone()
                },
                "tun_name",
            ),
            (
                ConfigFile {
                    tun_addr: Some("10.99.0.1/32".parse().unwrap()),
                    ..base.clone()
                },
                "tun_addr",
            ),
            (
                ConfigFile {
                    tun_addr: Some("10.99.0.0/24".parse().unwrap()),
                    ..base.clone()
                },
                "tun_addr",
            ),
            (
                ConfigFile {
                    tun_addr: Some("10.99.0.255/24".parse().unwrap()),
                    ..base.clone()
                },
                "tun_addr",
            ),
            (
                ConfigFile {
                    link_listen: base.listen,
                    ..base.clone()
                },
                "link_listen",
            ),
        ];
        for (f, key) in cases {
            let e = resolved_without_key(f).unwrap_err();
            assert!(e.to_string().starts_with(key), "{key}: {e}");
        }
    }

    #[test]
    fn nat_defaults_to_the_tunnel_prefix_and_its_keys_are_checked() {
        let c = resolved_without_key(
            ConfigFile::parse(&format!("{GOOD}[nat]\nout_interface = \"eth0\"\n")).unwrap(),
        )
        .unwrap();
        let nat = c.nat.expect("[nat]");
        assert_eq!(nat.out_interface, "eth0");
        assert_eq!(nat.prefixes, [c.tun_addr.trunc()]);
        let e = ConfigFile::parse(&format!("{GOOD}[nat]\nout_iface = \"eth0\"\n")).unwrap_err();
        assert!(e.to_string().contains("out_iface"), "{e}");
        for (nat, key) in [
            ("out_interface = \"a very long name\"", "nat.out_interface"),
            ("out_interface = \"jvpn-exit0\"", "nat.out_interface"),
            (
                "out_interface = \"eth0\"\nprefixes = [\"0.0.0.0/0\"]",
                "nat.prefixes",
            ),
        ] {
            let f = ConfigFile::parse(&format!("{GOOD}[nat]\n{nat}\n")).unwrap();
            let e = resolved_without_key(f).unwrap_err();
            assert!(e.to_string().starts_with(key), "{nat}: {e}");
        }
    }

    #[test]
    fn missing_and_merge() {
        let e = ConfigFile::default().resolve().unwrap_err();
        assert_eq!(
            e.to_string(),
            "listen: missing (set it in the config file or with --listen)"
        );
        let f = ConfigFile::parse(GOOD).unwrap().merge(ConfigFile {
            mtu: Some(1300),
            ..ConfigFile::default()
        });
        assert_eq!(f.mtu, Some(1300));
        assert_eq!(f.listen, Some("10.77.9.2:51821".parse().unwrap()));
        let e = ConfigFile {
            link_key_file: Some("/nonexistent/jvpn/link.key".into()),
            ..ConfigFile::parse(GOOD).unwrap()
        }
        .resolve()
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("link_key_file: /nonexistent/jvpn/link.key"),
            "{e}"
        );
    }
}
