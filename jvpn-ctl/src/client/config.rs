//! Client agent configuration: TOML, then command-line overrides, then validation.
//!
//! ```toml
//! identity = "/etc/jvpn/client.key"
//! gateway_public_key = "3b6a27bc…"        # 64 hex characters (`jvpn-ctl pubkey`)
//! tun_name = "jvpn0"
//! routes = ["10.99.0.0/24"]               # sent through the tunnel
//!
//! [[transport]]                           # most preferred first
//! name = "wifi"
//! kind = "wifi"                           # wifi | cellular | ethernet
//! bind = "192.0.2.10:40000"               # source address (port 0: any)
//! interface = "wlan0"                     # optional: SO_BINDTODEVICE
//! gateway = "198.51.100.1:51820"           # or, for the nodes of one gateway cluster:
//! # gateways = ["198.51.100.1:51820", "198.51.100.2:51820"]
//! ```
//!
//! Unknown keys and invalid values are errors that name the key.

use std::{
    collections::HashSet,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{proto::TransportKind, tun};

pub const DEFAULT_SOCKET: &str = "/run/jvpn/client.sock";
pub const DEFAULT_TUN_NAME: &str = "jvpn0";

/// The kind of a transport, as the gateway is told in REATTACH_REQUEST.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Wifi,
    Cellular,
    Ethernet,
}

impl Kind {
    pub fn wire(self) -> TransportKind {
        match self {
            Kind::Wifi => TransportKind::Wifi,
            Kind::Cellular => TransportKind::Cellular,
            Kind::Ethernet => TransportKind::Ethernet,
        }
    }
}

/// One way to reach the gateway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransportConfig {
    /// Short name used in events, status and `jvpn-ctl client move`.
    pub name: String,
    pub kind: Kind,
    /// Local source address; the port may be 0 (any). Without it (or with an
    /// unspecified address such as `0.0.0.0:40000`) the transport **follows its
    /// interface**: its source is the interface's current address of the gateway's
    /// family, and the socket is bound anew when that address changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<SocketAddr>,
    /// Interface the socket is tied to (SO_BINDTODEVICE), so its packets never leave
    /// through another link when routes change; its link and address events make the
    /// transport DEAD at once (or usable again).
    #[serde(default)]
    pub interface: Option<String>,
    /// The gateway's address on this transport (same family as `bind`). Exactly one
    /// of `gateway` and `gateways` is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<SocketAddr>,
    /// The addresses of the nodes of one gateway cluster (one identity, one
    /// `gateway_public_key`) on this transport, tried in this order: the transport
    /// moves to the next one when the current one stops answering or refuses a
    /// reattach as `ownership_ambiguous` (docs/client.md, "Gateway clusters").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateways: Option<Vec<SocketAddr>>,
}

impl TransportConfig {
    /// IPv6 outer packets (the gateway addresses' family).
    pub fn v6(&self) -> bool {
        match self.bind {
            Some(b) => b.is_ipv6(),
            None => self.addresses().first().is_some_and(SocketAddr::is_ipv6),
        }
    }

    /// Its source address comes from its interface (see `bind`).
    pub fn follows_interface(&self) -> bool {
        self.interface.is_some() && self.bind.is_none_or(|b| b.ip().is_unspecified())
    }

    /// What the socket binds before an interface address is known: `bind`, or the
    /// unspecified address of the family, port 0.
    pub fn bind_addr(&self) -> SocketAddr {
        self.bind.unwrap_or(if self.v6() {
            SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
        } else {
            SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0))
        })
    }

    /// The gateway addresses, in order: `gateway` alone, or `gateways` (empty only in
    /// a configuration that [`ClientConfig::validate`] refuses).
    pub fn addresses(&self) -> Vec<SocketAddr> {
        match (&self.gateway, &self.gateways) {
            (Some(a), None) => vec![*a],
            (None, Some(list)) => list.clone(),
            (Some(a), Some(list)) => std::iter::once(*a).chain(list.iter().copied()).collect(),
            (None, None) => Vec::new(),
        }
    }

    /// Checks the gateway keys; `i` is the transport's index, for the key in errors.
    fn validate_gateways(&self, i: usize) -> Result<(), ConfigError> {
        let list: Vec<(String, SocketAddr)> = match (&self.gateway, &self.gateways) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    format!("transport[{i}].gateways"),
                    "give either gateway (one address) or gateways (a list), not both",
                ));
            }
            (None, None) => {
                return Err(invalid(
                    format!("transport[{i}].gateway"),
                    "missing (or gateways = [...] for the nodes of a gateway cluster)",
                ));
            }
            (None, Some(list)) if list.is_empty() => {
                return Err(invalid(
                    format!("transport[{i}].gateways"),
                    "needs at least one address",
                ));
            }
            (Some(a), None) => vec![(format!("transport[{i}].gateway"), *a)],
            (None, Some(list)) => list
                .iter()
                .enumerate()
                .map(|(j, a)| (format!("transport[{i}].gateways[{j}]"), *a))
                .collect(),
        };
        let mut seen = HashSet::new();
        for (key, a) in list {
            if let Some(b) = self.bind
                && b.is_ipv4() != a.is_ipv4()
            {
                return Err(invalid(
                    key,
                    format!("{a} is not the same family as bind {b}"),
                ));
            }
            if self.bind.is_none() && a.is_ipv4() == self.v6() {
                return Err(invalid(
                    key,
                    format!("{a} is not the same family as the transport's other addresses"),
                ));
            }
            if a.port() == 0 || a.ip().is_unspecified() {
                return Err(invalid(key, "needs an address and a port"));
            }
            if !seen.insert(a) {
                return Err(invalid(key, format!("{a} is listed twice")));
            }
        }
        Ok(())
    }
}

/// Thresholds that make the bound transport VOLATILE, and the move-back rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Lost keepalives among the last [`super::health::WINDOW`] probes.
    pub max_loss_pct: u32,
    pub max_rtt_ms: u32,
    pub max_jitter_ms: u32,
    /// Silence on the bound transport after which it is VOLATILE (before it is DEAD
    /// at the gateway's `transport_loss_ttl_ms`). 0: twice the keepalive interval.
    pub volatile_after_ms: u64,
    /// A more preferred transport must have been healthy this long before the
    /// session moves back to it.
    pub return_after_ms: u64,
    /// How long one reattach exchange may take before the next candidate is tried.
    pub attempt_timeout_ms: u64,
    /// Overrides the gateway's keepalive interval / loss TTL hints (0: use the hint).
    pub keepalive_interval_ms: u64,
    pub transport_loss_ttl_ms: u64,
    /// KEEPALIVE period on the **bound** transport (standby ones use the keepalive
    /// interval), so its loss, RTT and jitter are measured whether or not data flows;
    /// 0: the keepalive interval. Each costs the gateway one authenticated answer.
    pub probe_interval_ms: u64,
    /// Over a loss / RTT / jitter threshold this long → VOLATILE (and moved away from
    /// when another transport is healthy); back under the leave thresholds (half the
    /// loss, 80 % of RTT and jitter) three times as long → healthy again.
    pub quality_dwell_ms: u64,
    /// No tunnel data sent or received for this long makes the session idle (0:
    /// never): keepalives slow to `idle_keepalive_ms` on the bound transport and
    /// `idle_standby_ms` on the others, so a gateway can keep a million idle sessions
    /// alive (docs/client.md, "Keepalive schedule"). The first data speeds them up again.
    pub idle_after_ms: u64,
    pub idle_keepalive_ms: u64,
    pub idle_standby_ms: u64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            max_loss_pct: 20,
            max_rtt_ms: 1_000,
            max_jitter_ms: 300,
            volatile_after_ms: 0,
            return_after_ms: 2_000,
            attempt_timeout_ms: 500,
            keepalive_interval_ms: 0,
            transport_loss_ttl_ms: 0,
            probe_interval_ms: 100,
            quality_dwell_ms: 400,
            idle_after_ms: 10_000,
            idle_keepalive_ms: 15_000,
            idle_standby_ms: 25_000,
        }
    }
}

/// KEEPALIVEs a second one idle session with `transports` transports sends at the
/// default schedule (docs/client.md, "Keepalive schedule"), with the gateway's default
/// keepalive hint: what the keepalive bench offers the gateway per session.
pub fn idle_keepalives_per_s(transports: usize) -> f64 {
    let h = HealthConfig::default();
    1000.0 / h.idle_keepalive_ms as f64
        + transports.saturating_sub(1) as f64 * 1000.0 / h.idle_standby_ms as f64
}

/// The file as written; flags fill or override it, then [`ClientConfig::validate`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    pub identity: PathBuf,
    /// The gateway's Ed25519 public key, 64 hex characters.
    pub gateway_public_key: String,
    #[serde(default = "default_tun")]
    pub tun_name: String,
    #[serde(default = "default_mtu")]
    pub mtu: u32,
    /// Destinations routed into the tunnel.
    #[serde(default)]
    pub routes: Vec<IpNet>,
    #[serde(default = "default_socket")]
    pub control_socket: PathBuf,
    /// JSON-lines event log (the gateway's event format).
    #[serde(default)]
    pub event_log: Option<PathBuf>,
    /// After the gateway TERMINATES the session, establish a new one (and say so).
    #[serde(default = "yes")]
    pub reconnect: bool,
    #[serde(rename = "transport")]
    pub transports: Vec<TransportConfig>,
    #[serde(default)]
    pub health: HealthConfig,
}

fn default_tun() -> String {
    DEFAULT_TUN_NAME.into()
}
fn default_mtu() -> u32 {
    tun::DEFAULT_MTU
}
fn default_socket() -> PathBuf {
    DEFAULT_SOCKET.into()
}
fn yes() -> bool {
    true
}

/// Messages include their cause (no `source`, so `{:#}` does not repeat it).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    File(#[from] crate::toml_file::TomlError),
    #[error("{key}: {problem}")]
    Invalid { key: String, problem: String },
}

fn invalid(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        problem: problem.into(),
    }
}

impl ClientConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Ok(crate::toml_file::load(path)?)
    }

    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        Ok(crate::toml_file::parse(text)?)
    }

    /// The gateway key as bytes.
    pub fn gateway_key(&self) -> Result<[u8; 32], ConfigError> {
        crate::proto::identity::parse_public(&self.gateway_public_key)
            .map_err(|e| invalid("gateway_public_key", e.to_string()))
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.gateway_key()?;
        if self.transports.is_empty() {
            return Err(invalid("transport", "at least one [[transport]] is needed"));
        }
        let mut names = HashSet::new();
        for (i, t) in self.transports.iter().enumerate() {
            let key = |k: &str| format!("transport[{i}].{k}");
            if t.name.is_empty() || t.name.len() > 32 || t.name.contains(char::is_whitespace) {
                return Err(invalid(key("name"), "1 to 32 characters, no spaces"));
            }
            if !names.insert(t.name.as_str()) {
                return Err(invalid(key("name"), format!("{:?} is used twice", t.name)));
            }
            if t.bind.is_none() && t.interface.is_none() {
                return Err(invalid(
                    key("bind"),
                    "missing: give a source address, or interface = \"NAME\" to follow \
                     that interface's address",
                ));
            }
            t.validate_gateways(i)?;
            if let Some(dev) = &t.interface
                && (dev.is_empty() || dev.len() > 15)
            {
                return Err(invalid(key("interface"), "1 to 15 characters"));
            }
        }
        if !(576..=9000).contains(&self.mtu) {
            return Err(invalid("mtu", "must be between 576 and 9000"));
        }
        let h = &self.health;
        if h.max_loss_pct > 100 {
            return Err(invalid("health.max_loss_pct", "is a percentage (0..=100)"));
        }
        for (k, v) in [
            ("health.return_after_ms", h.return_after_ms),
            ("health.attempt_timeout_ms", h.attempt_timeout_ms),
        ] {
            if v == 0 {
                return Err(invalid(k, "must be positive"));
            }
        }
        if h.idle_after_ms > 3_600_000 {
            return Err(invalid(
                "health.idle_after_ms",
                "at most 3600000 (an hour; 0: never idle)",
            ));
        }
        if h.idle_after_ms > 0 {
            // NAT mappings of UDP live ~30 s or more (RFC 4787 asks for 2 min): slower
            // than a minute would lose them.
            for (k, v) in [
                ("health.idle_keepalive_ms", h.idle_keepalive_ms),
                ("health.idle_standby_ms", h.idle_standby_ms),
            ] {
                if !(1_000..=60_000).contains(&v) {
                    return Err(invalid(k, "must be between 1000 and 60000"));
                }
            }
        }
        self.validate_routes()
    }

    /// A route into the tunnel must not capture the agent's own packets to its
    /// gateways: they would go into the tunnel they carry. The default routes
    /// (`0.0.0.0/0`, `::/0`) are the exception that is handled: they go to a table of
    /// their own that the agent's sockets skip (`client/fullroute.rs`).
    fn validate_routes(&self) -> Result<(), ConfigError> {
        for r in &self.routes {
            if r.prefix_len() == 0 {
                continue;
            }
            for t in &self.transports {
                if let Some(g) = t.addresses().iter().find(|g| r.contains(&g.ip())) {
                    return Err(invalid(
                        "routes",
                        format!(
                            "{r} contains {} (a gateway of transport {:?}): the agent's own \
                             packets would go into the tunnel; use narrower prefixes, or \
                             \"0.0.0.0/0\" / \"::/0\" (all-traffic mode, which keeps them out)",
                            g.ip(),
                            t.name
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The families routed whole through the tunnel (`0.0.0.0/0`, `::/0`).
    pub fn all_traffic(&self) -> (bool, bool) {
        let any = |v4: bool| {
            self.routes
                .iter()
                .any(|r| r.prefix_len() == 0 && r.addr().is_ipv4() == v4)
        };
        (any(true), any(false))
    }

    pub fn transport_index(&self, name: &str) -> Option<usize> {
        self.transports.iter().position(|t| t.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29";

    fn text(extra: &str) -> String {
        format!(
            "identity = \"/k\"\ngateway_public_key = \"{KEY}\"\n{extra}\n\
             [[transport]]\nname = \"wifi\"\nkind = \"wifi\"\nbind = \"10.0.0.2:0\"\ngateway = \"10.0.0.1:51820\"\n"
        )
    }

    #[test]
    fn routes_that_capture_a_gateway_are_refused_the_default_routes_are_not() {
        let c = ClientConfig::parse(&text("routes = [\"0.0.0.0/0\", \"::/0\"]")).unwrap();
        c.validate().unwrap();
        assert_eq!(c.all_traffic(), (true, true));
        let c = ClientConfig::parse(&text("routes = [\"10.99.0.0/24\"]")).unwrap();
        c.validate().unwrap();
        assert_eq!(c.all_traffic(), (false, false));
        let c = ClientConfig::parse(&text("routes = [\"10.0.0.0/8\"]")).unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.starts_with("routes: 10.0.0.0/8 contains 10.0.0.1 (a gateway of transport \"wifi\")"),
            "{e}"
        );
    }

    #[test]
    fn idle_schedule_values_are_checked() {
        for (extra, key) in [
            (
                "[health]\nidle_keepalive_ms = 0",
                "health.idle_keepalive_ms",
            ),
            (
                "[health]\nidle_standby_ms = 600000",
                "health.idle_standby_ms",
            ),
            ("[health]\nidle_after_ms = 3600001", "health.idle_after_ms"),
        ] {
            let e = ClientConfig::parse(&text(extra))
                .unwrap()
                .validate()
                .unwrap_err();
            assert!(e.to_string().contains(key), "{e}");
        }
        // Never idle: the idle periods are not used, so not checked.
        let c = ClientConfig::parse(&text("[health]\nidle_after_ms = 0\nidle_keepalive_ms = 0"));
        c.unwrap().validate().unwrap();
        assert!((idle_keepalives_per_s(3) - (1.0 / 15.0 + 2.0 / 25.0)).abs() < 1e-9);
    }

    #[test]
    fn defaults_and_a_valid_file() {
        let c = ClientConfig::parse(&text("")).unwrap();
        c.validate().unwrap();
        assert_eq!(c.tun_name, DEFAULT_TUN_NAME);
        assert!(c.reconnect);
        assert_eq!(c.health, HealthConfig::default());
        assert_eq!(c.transport_index("wifi"), Some(0));
    }

    #[test]
    fn errors_name_the_key() {
        let unknown = ClientConfig::parse(&text("colour = 1")).unwrap_err();
        assert!(unknown.to_string().contains("colour"), "{unknown}");
        let bad_kind =
            ClientConfig::parse(&text("").replace("\"wifi\"\nbind", "\"carrier-pigeon\"\nbind"))
                .unwrap_err();
        assert!(
            bad_kind.to_string().contains("carrier-pigeon"),
            "{bad_kind}"
        );
        let mut c = ClientConfig::parse(&text("")).unwrap();
        c.transports[0].gateway = Some("[fd00::1]:51820".parse().unwrap());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.starts_with("transport[0].gateway:"), "{e}");
        let mut c = ClientConfig::parse(&text("")).unwrap();
        c.transports.push(c.transports[0].clone());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("used twice"), "{e}");
        let mut c = ClientConfig::parse(&text("")).unwrap();
        c.gateway_public_key = "abc".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.starts_with("gateway_public_key:"), "{e}");
        let mut c = ClientConfig::parse(&text("")).unwrap();
        c.transports.clear();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .starts_with("transport:")
        );
    }

    /// `text("")` with its `gateway = …` line replaced.
    fn with_gateways(line: &str) -> Result<ClientConfig, ConfigError> {
        let c = ClientConfig::parse(&text("").replace("gateway = \"10.0.0.1:51820\"", line))?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn gateway_one_address_or_a_list() {
        let one = with_gateways("gateway = \"10.0.0.1:51820\"").unwrap();
        assert_eq!(
            one.transports[0].addresses(),
            ["10.0.0.1:51820".parse().unwrap()]
        );
        assert_eq!(one, ClientConfig::parse(&text("")).unwrap(), "unchanged");
        let list = with_gateways("gateways = [\"10.0.0.1:51820\", \"10.0.0.9:51821\"]").unwrap();
        let want: Vec<SocketAddr> = vec![
            "10.0.0.1:51820".parse().unwrap(),
            "10.0.0.9:51821".parse().unwrap(),
        ];
        assert_eq!(list.transports[0].addresses(), want);
        // --print-config writes back what was read (a single address stays `gateway`).
        let printed = toml::to_string(&one).unwrap();
        assert!(
            printed.contains("gateway = \"10.0.0.1:51820\""),
            "{printed}"
        );
        assert!(!printed.contains("gateways"), "{printed}");
        let printed = toml::to_string(&list).unwrap();
        assert_eq!(ClientConfig::parse(&printed).unwrap(), list);
    }

    #[test]
    fn gateway_list_errors_name_the_key() {
        let err = |line: &str| with_gateways(line).unwrap_err().to_string();
        let e = err("gateway = \"10.0.0.1:51820\"\ngateways = [\"10.0.0.9:51820\"]");
        assert!(e.starts_with("transport[0].gateways:"), "{e}");
        assert!(e.contains("not both"), "{e}");
        let e = err("gateways = []");
        assert!(e.starts_with("transport[0].gateways:"), "{e}");
        assert!(e.contains("at least one"), "{e}");
        let e = err("");
        assert!(e.starts_with("transport[0].gateway:"), "{e}");
        let e = err("gateways = [\"10.0.0.1:51820\", \"10.0.0.9:51820\", \"[fd00::1]:51820\"]");
        assert!(e.starts_with("transport[0].gateways[2]:"), "{e}");
        assert!(e.contains("family"), "{e}");
        let e = err("gateways = [\"10.0.0.1:51820\", \"10.0.0.9:0\"]");
        assert!(e.starts_with("transport[0].gateways[1]:"), "{e}");
        let e = err("gateways = [\"10.0.0.1:51820\", \"10.0.0.9:51820\", \"10.0.0.1:51820\"]");
        assert!(e.starts_with("transport[0].gateways[2]:"), "{e}");
        assert!(e.contains("listed twice"), "{e}");
        // Not an address at all: the TOML reader names the key.
        let e = err("gateways = [\"10.0.0.1:51820\", \"nowhere\"]");
        assert!(e.contains("gateways"), "{e}");
    }
}
