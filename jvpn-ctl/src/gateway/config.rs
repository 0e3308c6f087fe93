//! Gateway configuration: a TOML file, then command-line overrides, then validation.
//!
//! Unknown keys and invalid values are errors that name the key: a gateway that
//! guesses at its security policy is worse than one that refuses to start.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::session::{Policy, PolicyError};

pub const DEFAULT_SOCKET: &str = "/run/jvpn/jvpn.sock";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Interfaces the XDP relay is attached to; the controller listens on their addresses.
    pub interfaces: Vec<String>,
    #[serde(default = "default_port")]
    pub port: u16,
    /// Ed25519 identity (PKCS#8).
    pub identity: PathBuf,
    /// Allowed client public keys.
    pub peers: PathBuf,
    pub exit: ExitConfig,
    pub pool: PoolConfig,
    #[serde(default)]
    pub policy: Policy,
    /// JSON-lines event log; none when absent.
    #[serde(default)]
    pub event_log: Option<PathBuf>,
    #[serde(default = "default_socket")]
    pub control_socket: PathBuf,
    /// Prometheus endpoint (`GET /metrics`); none when absent.
    #[serde(default)]
    pub metrics: Option<SocketAddr>,
    #[serde(default = "default_pin_dir")]
    pub pin_dir: PathBuf,
    #[serde(default = "default_max_sessions")]
    pub max_sessions: u32,
    /// XDP attach mode: "native" (falls back to skb with a warning) or "skb".
    #[serde(default = "default_attach")]
    pub attach: String,
    /// Where the durable session store lives (created 0700 if missing).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// The key that seals the store's records; default `<state_dir>/store.key`,
    /// created (0600) on first start.
    #[serde(default)]
    pub store_key: Option<PathBuf>,
    /// Where the records go: the local file under `state_dir` unless `[store]` says
    /// otherwise.
    #[serde(default)]
    pub store: StoreConfig,
    /// Several gateways sharing their sessions through etcd (`[cluster]`); the
    /// records are then in etcd, `[store]` is not used.
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
}

/// One node of a gateway cluster (`docs/gateway.md`, "Clusters").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's number, unique in the cluster, 1..=65535.
    pub node: u16,
    pub etcd_endpoints: Vec<String>,
    #[serde(default = "default_cluster_root")]
    pub root: String,
    /// The node's lease: how long a dead node's sessions wait for a takeover.
    #[serde(default = "default_lease_ttl_s")]
    pub lease_ttl_s: u64,
    /// One etcd request's limit; a reattach waits for its write.
    #[serde(default = "default_cluster_timeout_ms")]
    pub etcd_timeout_ms: u64,
}

fn default_cluster_root() -> String {
    crate::cluster::DEFAULT_ROOT.into()
}
fn default_lease_ttl_s() -> u64 {
    crate::cluster::DEFAULT_TTL.as_secs()
}
fn default_cluster_timeout_ms() -> u64 {
    1_000
}

/// The session store's backend (`[store]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// "local" (a redb file in `state_dir`) or "etcd".
    #[serde(default = "default_backend")]
    pub backend: String,
    /// etcd client URLs, e.g. `["http://10.0.0.5:2379"]`.
    #[serde(default)]
    pub etcd_endpoints: Vec<String>,
    #[serde(default = "default_etcd_prefix")]
    pub etcd_prefix: String,
    /// How long one etcd request may take before the change it carries is refused.
    #[serde(default = "default_etcd_timeout_ms")]
    pub etcd_timeout_ms: u64,
    /// Writes per transaction the etcd servers accept (their `--max-txn-ops`, 128 by
    /// default); a larger group commit is split.
    #[serde(default = "default_etcd_max_txn_ops")]
    pub etcd_max_txn_ops: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            backend: default_backend(),
            etcd_endpoints: Vec::new(),
            etcd_prefix: default_etcd_prefix(),
            etcd_timeout_ms: default_etcd_timeout_ms(),
            etcd_max_txn_ops: default_etcd_max_txn_ops(),
        }
    }
}

fn default_backend() -> String {
    "local".into()
}
fn default_etcd_prefix() -> String {
    crate::store::etcd::DEFAULT_PREFIX.into()
}
fn default_etcd_timeout_ms() -> u64 {
    2_000
}
fn default_etcd_max_txn_ops() -> usize {
    128
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExitConfig {
    /// The exit's DATA address (where the relay sends client traffic).
    pub data: SocketAddr,
    /// The exit's key-delivery link address.
    pub link: SocketAddr,
    /// Pre-shared 32-byte link key, 64 hex characters.
    pub link_key: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Tunnel addresses handed to clients.
    pub cidr: IpNet,
    /// Addresses never handed out (the exit's own tunnel address, typically).
    #[serde(default)]
    pub reserved: Vec<IpAddr>,
}

fn default_port() -> u16 {
    jvpn_common::DEFAULT_PORT
}
fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_SOCKET)
}
fn default_pin_dir() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/jvpn")
}
fn default_max_sessions() -> u32 {
    jvpn_common::DEFAULT_MAX_SESSIONS
}
fn default_attach() -> String {
    "native".into()
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/jvpn")
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    File(#[from] crate::toml_file::TomlError),
    #[error("{key}: {problem}")]
    Invalid { key: String, problem: String },
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

fn invalid(key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        problem: problem.into(),
    }
}

impl GatewayConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Ok(crate::toml_file::load(path)?)
    }

    fn validate_cluster(&self) -> Result<(), ConfigError> {
        let Some(c) = &self.cluster else {
            return Ok(());
        };
        if c.node == 0 {
            return Err(invalid(
                "cluster.node",
                "must be 1..=65535 (0 is a single gateway)",
            ));
        }
        if c.etcd_endpoints.is_empty() {
            return Err(invalid(
                "cluster.etcd_endpoints",
                "a cluster needs at least one etcd endpoint",
            ));
        }
        if !(1..=60).contains(&c.lease_ttl_s) {
            return Err(invalid(
                "cluster.lease_ttl_s",
                format!("{} is outside 1..=60", c.lease_ttl_s),
            ));
        }
        // A write must be answered (or given up) well before the lease could run out.
        let max = c.lease_ttl_s * 1000 / 2;
        if !(50..=max).contains(&c.etcd_timeout_ms) {
            return Err(invalid(
                "cluster.etcd_timeout_ms",
                format!(
                    "{} is outside 50..={max} (half the lease TTL)",
                    c.etcd_timeout_ms
                ),
            ));
        }
        if !c.root.ends_with('/') {
            return Err(invalid("cluster.root", "must end with '/'"));
        }
        if self.store.backend != "local" {
            return Err(invalid(
                "store.backend",
                "a cluster keeps its sessions in the [cluster]'s etcd: remove [store]",
            ));
        }
        Ok(())
    }

    fn validate_store(&self) -> Result<(), ConfigError> {
        let st = &self.store;
        match st.backend.as_str() {
            "local" => Ok(()),
            "etcd" if st.etcd_endpoints.is_empty() => Err(invalid(
                "store.etcd_endpoints",
                "the etcd backend needs at least one endpoint",
            )),
            "etcd" if !(50..=60_000).contains(&st.etcd_timeout_ms) => Err(invalid(
                "store.etcd_timeout_ms",
                format!("{} is outside 50..=60000", st.etcd_timeout_ms),
            )),
            "etcd" if st.etcd_max_txn_ops == 0 => {
                Err(invalid("store.etcd_max_txn_ops", "must be at least 1"))
            }
            "etcd" if !st.etcd_prefix.ends_with('/') => {
                Err(invalid("store.etcd_prefix", "must end with '/'"))
            }
            "etcd" => Ok(()),
            other => Err(invalid(
                "store.backend",
                format!("{other:?}: expected \"local\" or \"etcd\""),
            )),
        }
    }

    /// Parses TOML; the messages name the offending key and line.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        Ok(crate::toml_file::parse(text)?)
    }

    /// Checks what serde cannot: ranges and relations between values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_store()?;
        self.validate_cluster()?;
        if self.interfaces.is_empty() {
            return Err(invalid("interfaces", "at least one interface is needed"));
        }
        if let Some(bad) = self
            .interfaces
            .iter()
            .find(|i| i.is_empty() || i.len() >= libc::IFNAMSIZ || i.contains(['/', ' ', '\0']))
        {
            return Err(invalid(
                "interfaces",
                format!("{bad:?} is not a valid interface name"),
            ));
        }
        if self.port == 0 {
            return Err(invalid("port", "must not be 0"));
        }
        for (key, a) in [("exit.data", self.exit.data), ("exit.link", self.exit.link)] {
            if a.port() == 0 || a.ip().is_unspecified() {
                return Err(invalid(
                    key,
                    format!("{a} needs a concrete address and port"),
                ));
            }
        }
        if self.exit.data == self.exit.link {
            return Err(invalid("exit.link", "must differ from exit.data"));
        }
        let IpNet::V4(net) = self.pool.cidr else {
            return Err(invalid(
                "pool.cidr",
                "only IPv4 tunnel pools are supported for now",
            ));
        };
        if net.prefix_len() > 30 {
            return Err(invalid("pool.cidr", "needs at least a /30"));
        }
        if let Some(r) = self
            .pool
            .reserved
            .iter()
            .find(|r| !self.pool.cidr.contains(*r))
        {
            return Err(invalid(
                "pool.reserved",
                format!("{r} is outside {}", self.pool.cidr),
            ));
        }
        if self.max_sessions == 0 {
            return Err(invalid("max_sessions", "must be greater than 0"));
        }
        if !matches!(self.attach.as_str(), "native" | "skb") {
            return Err(invalid("attach", "must be \"native\" or \"skb\""));
        }
        self.policy.validate()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_store_section_is_checked() {
        let base = "interfaces = [\"eth0\"]\nidentity = \"/k\"\npeers = \"/p\"\n\
                    [exit]\ndata = \"10.0.0.2:51821\"\nlink = \"10.0.0.2:51822\"\n\
                    link_key = \"/l\"\n[pool]\ncidr = \"10.99.0.0/22\"\n";
        let with = |store: &str| {
            let c = GatewayConfig::parse(&format!("{base}[store]\n{store}")).unwrap();
            c.validate().err().map(|e| e.to_string())
        };
        let c = GatewayConfig::parse(base).unwrap();
        assert_eq!(c.store.backend, "local", "the local file by default");
        assert_eq!(with("backend = \"local\""), None);
        assert_eq!(
            with("backend = \"etcd\"\netcd_endpoints = [\"http://10.0.0.5:2379\"]"),
            None
        );
        let err = with("backend = \"etcd\"").unwrap();
        assert!(err.contains("store.etcd_endpoints"), "{err}");
        let err = with("backend = \"sqlite\"").unwrap();
        assert!(
            err.contains("store.backend") && err.contains("sqlite"),
            "{err}"
        );
        let err =
            with("backend = \"etcd\"\netcd_endpoints = [\"http://e:2379\"]\netcd_timeout_ms = 10")
                .unwrap();
        assert!(err.contains("store.etcd_timeout_ms"), "{err}");
        let err =
            with("backend = \"etcd\"\netcd_endpoints = [\"http://e:2379\"]\netcd_prefix = \"/x\"")
                .unwrap();
        assert!(err.contains("store.etcd_prefix"), "{err}");
    }

    use super::*;

    const GOOD: &str = r#"
interfaces = ["g-wifi", "g-lte", "g-exit"]
identity = "/etc/jvpn/gateway.key"
peers = "/etc/jvpn/peers"
[exit]
data = "10.77.9.2:51821"
link = "10.77.9.2:51822"
link_key = "/etc/jvpn/link.key"
[pool]
cidr = "10.99.0.0/24"
reserved = ["10.99.0.1"]
[policy]
max_switches_per_minute = 4
"#;

    #[test]
    fn parses_with_defaults() {
        let c = GatewayConfig::parse(GOOD).unwrap();
        c.validate().unwrap();
        assert_eq!(c.port, 51820);
        assert_eq!(c.policy.max_switches_per_minute, 4);
        assert_eq!(
            c.policy.candidate_ttl_ms,
            Policy::default().candidate_ttl_ms
        );
        assert_eq!(c.control_socket, PathBuf::from(DEFAULT_SOCKET));
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = GatewayConfig::parse(&format!("{GOOD}\nmax_switches = 3\n")).unwrap_err();
        assert!(e.to_string().contains("max_switches"), "{e}");
        let e = GatewayConfig::parse(&GOOD.replace("[pool]", "[pool]\nsize = 3")).unwrap_err();
        assert!(e.to_string().contains("size"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        let e = GatewayConfig::parse(&GOOD.replace("10.99.0.0/24", "10.99.0.0/33")).unwrap_err();
        assert!(e.to_string().contains("cidr"), "{e}");
        let e = GatewayConfig::parse(&GOOD.replace("= 4", "= -1")).unwrap_err();
        assert!(e.to_string().contains("max_switches_per_minute"), "{e}");
        let mut c = GatewayConfig::parse(GOOD).unwrap();
        c.policy.candidate_ttl_ms = 0;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("candidate_ttl_ms")
        );
        let mut c = GatewayConfig::parse(GOOD).unwrap();
        c.pool.reserved.push("10.1.1.1".parse().unwrap());
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("pool.reserved")
        );
        let mut c = GatewayConfig::parse(GOOD).unwrap();
        c.interfaces.clear();
        assert!(c.validate().unwrap_err().to_string().contains("interfaces"));
    }
}
