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
    /// Bytes per second the event log may grow by (a token bucket holding one
    /// second's worth); lines over it are left out, counted, and told of in one
    /// `EVENTS_SUPPRESSED` line when writing resumes.
    #[serde(default = "default_event_log_rate_bytes")]
    pub event_log_rate_bytes: u64,
    /// Past this size the event log is renamed to `<file>.1` and a new one started.
    #[serde(default = "default_event_log_max_bytes")]
    pub event_log_max_bytes: u64,
    /// Security events are aggregated per (kind, source prefix) over this interval:
    /// the first of each is published, the rest are counted in a `SECURITY_SUMMARY`.
    #[serde(default = "default_security_aggregate_ms")]
    pub security_aggregate_ms: u64,
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
    /// The XDP gate: the HELLO budget, cookies under load, per-session control budgets.
    #[serde(default)]
    pub limits: LimitsConfig,
}

/// `[limits]`: what the XDP program lets through to the controller
/// (docs/datapath.md, "The HELLO gate and control budgets"). Rates are per second,
/// bursts in packets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// HELLOs handed to the controller, all sources together.
    pub hello_budget_pps: u32,
    pub hello_budget_burst: u32,
    /// Under load: HELLOs with a valid cookie per source (IPv4 /32, IPv6 /64).
    pub hello_per_source_pps: u32,
    pub hello_per_source_burst: u32,
    /// How long the gateway stays under load after the budget last fell below half,
    /// or after the last HELLO it answered with a COOKIE.
    pub load_hold_ms: u32,
    /// Control messages of one session from its binding, and from anywhere else.
    pub control_binding_pps: u32,
    pub control_binding_burst: u32,
    pub control_other_pps: u32,
    pub control_other_burst: u32,
    /// How often the cookie key is replaced (a cookie is valid for one to two periods).
    pub cookie_rotate_s: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let d = crate::datapath::GateLimits::default();
        Self {
            hello_budget_pps: d.hello_budget_pps,
            hello_budget_burst: d.hello_budget_burst,
            hello_per_source_pps: d.hello_per_source_pps,
            hello_per_source_burst: d.hello_per_source_burst,
            load_hold_ms: d.load_hold_ms,
            control_binding_pps: d.control_binding_pps,
            control_binding_burst: d.control_binding_burst,
            control_other_pps: d.control_other_pps,
            control_other_burst: d.control_other_burst,
            cookie_rotate_s: d.cookie_rotate.as_secs(),
        }
    }
}

impl LimitsConfig {
    /// Zero and absurd values are refused, naming the key (`limits.<key>`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        use jvpn_common::bucket::{MAX_BURST, MAX_RATE};
        let rates = [
            ("hello_budget_pps", self.hello_budget_pps),
            ("hello_per_source_pps", self.hello_per_source_pps),
            ("control_binding_pps", self.control_binding_pps),
            ("control_other_pps", self.control_other_pps),
        ];
        let bursts = [
            ("hello_budget_burst", self.hello_budget_burst),
            ("hello_per_source_burst", self.hello_per_source_burst),
            ("control_binding_burst", self.control_binding_burst),
            ("control_other_burst", self.control_other_burst),
        ];
        let ranges = rates
            .map(|(k, v)| (k, u64::from(v), 1..=u64::from(MAX_RATE)))
            .into_iter()
            .chain(bursts.map(|(k, v)| (k, u64::from(v), 1..=u64::from(MAX_BURST))))
            .chain([
                ("load_hold_ms", u64::from(self.load_hold_ms), 1..=3_600_000),
                ("cookie_rotate_s", self.cookie_rotate_s, 10..=86_400),
            ]);
        for (key, v, range) in ranges {
            if !range.contains(&v) {
                return Err(invalid(
                    &format!("limits.{key}"),
                    format!("{v} is outside {}..={}", range.start(), range.end()),
                ));
            }
        }
        Ok(())
    }

    /// The data plane's form.
    pub fn gate(&self) -> crate::datapath::GateLimits {
        crate::datapath::GateLimits {
            hello_budget_pps: self.hello_budget_pps,
            hello_budget_burst: self.hello_budget_burst,
            hello_per_source_pps: self.hello_per_source_pps,
            hello_per_source_burst: self.hello_per_source_burst,
            load_hold_ms: self.load_hold_ms,
            control_binding_pps: self.control_binding_pps,
            control_binding_burst: self.control_binding_burst,
            control_other_pps: self.control_other_pps,
            control_other_burst: self.control_other_burst,
            cookie_rotate: std::time::Duration::from_secs(self.cookie_rotate_s),
        }
    }
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
    /// Tunnel addresses handed to clients (IPv4).
    pub cidr: IpNet,
    /// IPv6 tunnel addresses beside them (dual stack): a client with the address at
    /// offset n of `cidr` gets the address at offset n of `cidr6`.
    #[serde(default)]
    pub cidr6: Option<IpNet>,
    /// Addresses never handed out (the exit's own tunnel addresses, typically).
    #[serde(default)]
    pub reserved: Vec<IpAddr>,
}

impl PoolConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let IpNet::V4(net) = self.cidr else {
            return Err(invalid(
                "pool.cidr",
                format!(
                    "{} is not IPv4: the pool is IPv4 with an optional IPv6 prefix beside \
                     it (pool.cidr6)",
                    self.cidr
                ),
            ));
        };
        if net.prefix_len() > 30 {
            return Err(invalid("pool.cidr", "needs at least a /30"));
        }
        if let Some(c6) = self.cidr6 {
            let IpNet::V6(net6) = c6 else {
                return Err(invalid("pool.cidr6", format!("{c6} is not an IPv6 prefix")));
            };
            if let Some(alias) = crate::prefix::ipv4_alias(c6) {
                return Err(invalid(
                    "pool.cidr6",
                    format!(
                        "{c6} overlaps {alias}, where IPv6 addresses stand for IPv4 ones \
                         (the IPv4 pool {net})"
                    ),
                ));
            }
            if 128 - u32::from(net6.prefix_len()) < 32 - u32::from(net.prefix_len()) {
                return Err(invalid(
                    "pool.cidr6",
                    format!(
                        "{c6} has fewer addresses than pool.cidr {net}: every IPv4 address \
                         is paired with the IPv6 one at the same offset, so cidr6 needs \
                         a prefix of /{} or shorter",
                        128 - (32 - net.prefix_len())
                    ),
                ));
            }
        }
        if let Some(r) = self
            .reserved
            .iter()
            .find(|r| !self.cidr.contains(*r) && !self.cidr6.is_some_and(|c| c.contains(*r)))
        {
            let within = match self.cidr6 {
                Some(c6) => format!("{} or {c6}", self.cidr),
                None => self.cidr.to_string(),
            };
            return Err(invalid("pool.reserved", format!("{r} is outside {within}")));
        }
        Ok(())
    }

    /// The IPv6 prefix, once [`PoolConfig::validate`] has passed.
    pub fn net6(&self) -> Option<ipnet::Ipv6Net> {
        match self.cidr6 {
            Some(IpNet::V6(n)) => Some(n),
            _ => None,
        }
    }
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
fn default_event_log_rate_bytes() -> u64 {
    crate::control::events::DEFAULT_RATE_BYTES
}
fn default_event_log_max_bytes() -> u64 {
    crate::control::events::DEFAULT_MAX_BYTES
}
fn default_security_aggregate_ms() -> u64 {
    super::aggregate::DEFAULT_INTERVAL_MS
}

/// `event_log_rate_bytes`: at least a few lines a second (and more than the longest
/// line, so that the budget always lets one through), at most 1 GiB/s.
const EVENT_LOG_RATE: std::ops::RangeInclusive<u64> = 4_096..=1 << 30;
/// `event_log_max_bytes`: 1 MiB to 1 TiB.
const EVENT_LOG_MAX: std::ops::RangeInclusive<u64> = 1 << 20..=1 << 40;
/// `security_aggregate_ms`: at least two controller ticks, at most a minute.
const SECURITY_AGGREGATE: std::ops::RangeInclusive<u64> = 100..=60_000;

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

    fn validate_events(&self) -> Result<(), ConfigError> {
        for (key, v, range) in [
            (
                "event_log_rate_bytes",
                self.event_log_rate_bytes,
                EVENT_LOG_RATE,
            ),
            (
                "event_log_max_bytes",
                self.event_log_max_bytes,
                EVENT_LOG_MAX,
            ),
            (
                "security_aggregate_ms",
                self.security_aggregate_ms,
                SECURITY_AGGREGATE,
            ),
        ] {
            if v < *range.start() {
                return Err(invalid(key, format!("must be at least {}", range.start())));
            }
            if v > *range.end() {
                return Err(invalid(key, format!("must be at most {}", range.end())));
            }
        }
        Ok(())
    }

    /// The event log's bounds (`event_log_rate_bytes`, `event_log_max_bytes`).
    pub fn event_log_limits(&self) -> crate::control::events::LogLimits {
        crate::control::events::LogLimits {
            rate_bytes: self.event_log_rate_bytes,
            max_bytes: self.event_log_max_bytes,
        }
    }

    /// Parses TOML; the messages name the offending key and line.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        Ok(crate::toml_file::parse(text)?)
    }

    /// Checks what serde cannot: ranges and relations between values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.limits.validate()?;
        self.validate_store()?;
        self.validate_cluster()?;
        self.validate_events()?;
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
        self.pool.validate()?;
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

    /// `pool.cidr6`: IPv6, clear of the IPv4-aliasing ranges, with room for every
    /// offset of `pool.cidr`; reserved addresses may be in either pool.
    #[test]
    fn the_ipv6_pool_is_checked() {
        let with = |lines: &str| {
            let text = GOOD.replace(
                "[pool]\ncidr = \"10.99.0.0/24\"\nreserved = [\"10.99.0.1\"]\n",
                &format!("[pool]\n{lines}\n"),
            );
            GatewayConfig::parse(&text)
                .map_err(|e| e.to_string())
                .and_then(|c| c.validate().map(|()| c).map_err(|e| e.to_string()))
        };
        let c = with("cidr = \"10.99.0.0/24\"\ncidr6 = \"fd00:99::/120\"").unwrap();
        assert_eq!(c.pool.net6(), Some("fd00:99::/120".parse().unwrap()));
        with("cidr = \"10.99.0.0/24\"\ncidr6 = \"fd00:99::/64\"\nreserved = [\"10.99.0.1\", \"fd00:99::1\"]").unwrap();
        for (lines, want) in [
            (
                "cidr = \"10.99.0.0/24\"\ncidr6 = \"10.98.0.0/24\"",
                "pool.cidr6: 10.98.0.0/24 is not an IPv6 prefix",
            ),
            ("cidr = \"fd00::/64\"", "pool.cidr: fd00::/64 is not IPv4"),
            (
                "cidr = \"10.99.0.0/24\"\ncidr6 = \"::ffff:10.99.0.0/120\"",
                "overlaps ::ffff:0:0/96",
            ),
            (
                "cidr = \"10.99.0.0/24\"\ncidr6 = \"::a00:0/104\"",
                "overlaps ::/96",
            ),
            (
                "cidr = \"10.99.0.0/24\"\ncidr6 = \"fd00:99::/121\"",
                "a prefix of /120 or shorter",
            ),
            (
                "cidr = \"10.99.0.0/24\"\ncidr6 = \"fd00:99::/120\"\nreserved = [\"fd00:98::1\"]",
                "pool.reserved: fd00:98::1 is outside 10.99.0.0/24 or fd00:99::/120",
            ),
            (
                "cidr = \"10.99.0.0/24\"\nreserved = [\"fd00:99::1\"]",
                "pool.reserved: fd00:99::1 is outside 10.99.0.0/24",
            ),
        ] {
            let e = with(lines).unwrap_err();
            assert!(e.contains(want), "{lines}: {e}");
        }
    }

    #[test]
    fn limits_default_and_are_checked() {
        let c = GatewayConfig::parse(GOOD).unwrap();
        assert_eq!(c.limits, LimitsConfig::default());
        assert_eq!(c.limits.gate(), crate::datapath::GateLimits::default());
        assert_eq!(
            (c.limits.hello_budget_pps, c.limits.hello_per_source_burst),
            (4000, 5)
        );
        let with = |lines: &str| {
            GatewayConfig::parse(&format!("{GOOD}[limits]\n{lines}\n"))
                .map_err(|e| e.to_string())
                .and_then(|c| c.validate().map(|()| c).map_err(|e| e.to_string()))
        };
        let c = with("hello_budget_pps = 100\ncookie_rotate_s = 30").unwrap();
        assert_eq!(c.limits.gate().hello_budget_pps, 100);
        assert_eq!(c.limits.gate().cookie_rotate.as_secs(), 30);
        assert_eq!(
            c.limits.hello_budget_burst, 4000,
            "the rest keep their defaults"
        );
        for (line, key) in [
            ("hello_budget_pps = 0", "limits.hello_budget_pps"),
            ("hello_budget_pps = 10000001", "limits.hello_budget_pps"),
            ("hello_budget_burst = 0", "limits.hello_budget_burst"),
            (
                "hello_per_source_burst = 1000001",
                "limits.hello_per_source_burst",
            ),
            ("hello_per_source_pps = 0", "limits.hello_per_source_pps"),
            ("control_binding_pps = 0", "limits.control_binding_pps"),
            ("control_other_burst = 0", "limits.control_other_burst"),
            ("load_hold_ms = 0", "limits.load_hold_ms"),
            ("cookie_rotate_s = 9", "limits.cookie_rotate_s"),
            ("cookie_rotate_s = 86401", "limits.cookie_rotate_s"),
        ] {
            let e = with(line).unwrap_err();
            assert!(e.contains(key), "{line}: {e}");
        }
        let e = with("hello_rate = 5").unwrap_err();
        assert!(e.contains("hello_rate"), "{e}");
        let e = with("hello_budget_pps = -1").unwrap_err();
        assert!(e.contains("hello_budget_pps"), "{e}");
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

    #[test]
    fn the_event_log_bounds_default_and_are_checked() {
        let c = GatewayConfig::parse(GOOD).unwrap();
        assert_eq!(
            (
                c.event_log_rate_bytes,
                c.event_log_max_bytes,
                c.security_aggregate_ms
            ),
            (65_536, 64 << 20, 1_000)
        );
        assert_eq!(
            c.event_log_limits(),
            crate::control::events::LogLimits::default()
        );
        // Top level, next to event_log; shown by --print-config (what is printed
        // parses back to the same).
        let text = format!(
            "event_log = \"/var/log/jvpn/events.jsonl\"\nevent_log_rate_bytes = 8192\n\
             event_log_max_bytes = 2097152\nsecurity_aggregate_ms = 500\n{GOOD}"
        );
        let c = GatewayConfig::parse(&text).unwrap();
        c.validate().unwrap();
        assert_eq!(
            (
                c.event_log_rate_bytes,
                c.event_log_max_bytes,
                c.security_aggregate_ms
            ),
            (8_192, 2 << 20, 500)
        );
        let printed = toml::to_string(&c).unwrap();
        for line in [
            "event_log_rate_bytes = 8192\n",
            "event_log_max_bytes = 2097152\n",
            "security_aggregate_ms = 500\n",
        ] {
            assert!(printed.contains(line), "{printed}");
        }
        assert_eq!(GatewayConfig::parse(&printed).unwrap(), c);
        let err = |key: &str, v: u64| {
            GatewayConfig::parse(&format!("{key} = {v}\n{GOOD}"))
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err("event_log_max_bytes", 0),
            "event_log_max_bytes: must be at least 1048576"
        );
        assert_eq!(
            err("event_log_max_bytes", 1 << 41),
            "event_log_max_bytes: must be at most 1099511627776"
        );
        assert_eq!(
            err("event_log_rate_bytes", 0),
            "event_log_rate_bytes: must be at least 4096"
        );
        assert_eq!(
            err("event_log_rate_bytes", 1 << 31),
            "event_log_rate_bytes: must be at most 1073741824"
        );
        assert_eq!(
            err("security_aggregate_ms", 0),
            "security_aggregate_ms: must be at least 100"
        );
        assert_eq!(
            err("security_aggregate_ms", 3_600_000),
            "security_aggregate_ms: must be at most 60000"
        );
        let e = GatewayConfig::parse(&format!("event_log_max_bytes = -1\n{GOOD}")).unwrap_err();
        assert!(e.to_string().contains("event_log_max_bytes"), "{e}");
    }
}
