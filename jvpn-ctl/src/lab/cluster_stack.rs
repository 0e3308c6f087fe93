//! A gateway cluster running in the cluster lab ([`super::cluster`]): a real etcd
//! (one member or several) and the exit in the exit's namespace, every gateway node
//! a real `jvpn-ctl gateway` process in its own namespace, and the real client agent
//! with every node in its gateway list. Shared by `jvpn-ctl lab run --cluster` and
//! the tests.
//!
//! The exit runs in this process ([`ExitThread`]) so that its fencing counters can
//! be read while it runs. Everything is torn down on drop: processes killed, the
//! exit stopped, namespaces, pins and the state directory removed.

use std::{
    fs,
    io::{Error, Result, Write as _},
    net::{SocketAddr, UdpSocket},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Child,
    time::{Duration, Instant},
};

use ring::rand::SecureRandom as _;

use super::{
    cluster::{CLIENT, CLIENT_PORT, ClusterLab, EXIT},
    etcd::{EtcdCluster, EtcdError},
    exit_thread::ExitThread,
    traffic::EchoServer,
    unique,
};
use crate::{
    client::ClientStatus,
    control::{
        Client,
        api::{SessionId, SessionInfo, Stats},
    },
    exit::{self, CountersSnapshot},
    proto::{self, Peers},
};

pub const EXIT_TUN: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 99, 3, 1);
/// The exit's IPv6 tunnel address: the cluster's tunnel is dual-stack too, node n's
/// IPv6 pool `fd00:99::(n-1)00/120` beside its IPv4 `10.99.(n-1).0/24`.
pub const EXIT_TUN6: std::net::Ipv6Addr =
    std::net::Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 0x301);
pub const ECHO_PORT: u16 = 7000;
pub const EXIT_DATA_PORT: u16 = 51821;
pub const EXIT_LINK_PORT: u16 = 51822;

/// What the cluster is made of.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub nodes: u16,
    /// etcd members (all in the exit's namespace); 3 to show quorum loss.
    pub etcd_members: usize,
    /// The nodes' lease: a dead node's sessions wait this long for a takeover.
    pub lease_ttl_s: u64,
    /// The body of the nodes' `[policy]` table.
    pub policy: String,
    /// The nodes' `etcd_timeout_ms` (at most half the lease).
    pub etcd_timeout_ms: u64,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            nodes: 2,
            etcd_members: 1,
            lease_ttl_s: 2,
            policy:
                "keepalive_interval_ms = 100\ntransport_loss_ttl_ms = 500\nidle_loss_ttl_ms = 500\n\
                     candidate_ttl_ms = 1000\nmax_recovery_window_ms = 20000\n\
                     max_switches_per_minute = 60\n"
                    .into(),
            etcd_timeout_ms: 500,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterStackError {
    #[error("starting etcd: {0}")]
    Etcd(#[from] EtcdError),
    #[error(transparent)]
    Io(#[from] Error),
}

pub struct ClusterStack {
    pub lab: ClusterLab,
    pub etcd: EtcdCluster,
    pub dir: PathBuf,
    pub opts: ClusterOptions,
    bin: PathBuf,
    procs: Vec<(String, Child)>,
    exit: Option<ExitThread>,
    echo: Option<EchoServer>,
}

fn secret(path: &Path, text: &str) -> Result<()> {
    let mut f = fs::File::create(path)?;
    f.write_all(text.as_bytes())?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
}

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| Error::other("the system random source failed"))?;
    Ok(b)
}

impl ClusterStack {
    /// Builds the lab under a fresh directory in `dir_root`, starts etcd, the exit,
    /// its echo server and every node (waiting for their control sockets); `bin` is
    /// the `jvpn-ctl` the nodes and the client run.
    pub fn start(
        tag: &str,
        dir_root: &Path,
        bin: &Path,
        opts: ClusterOptions,
    ) -> std::result::Result<Self, ClusterStackError> {
        let lab = ClusterLab::build(tag, opts.nodes)?;
        let etcd = EtcdCluster::start_on(&lab.exit.name, EXIT, opts.etcd_members)?;
        let dir = dir_root.join(unique(&format!("jvpn-{tag}-")));
        fs::create_dir_all(&dir)?;
        let mut me = Self {
            lab,
            etcd,
            dir,
            opts,
            bin: bin.to_owned(),
            procs: Vec::new(),
            exit: None,
            echo: None,
        };
        me.write_configs()?;
        me.start_exit()?;
        let echo: SocketAddr = SocketAddr::from((EXIT_TUN, ECHO_PORT));
        me.echo = Some(EchoServer::start(&me.lab.exit, echo)?);
        for n in 0..me.lab.nodes.len() {
            me.start_node(n)?;
        }
        Ok(me)
    }

    fn write_configs(&self) -> Result<()> {
        let d = &self.dir;
        let io = |e: proto::ProtoError| Error::other(e.to_string());
        proto::identity::generate(&d.join("gateway.key"), false).map_err(io)?;
        let client = proto::identity::generate(&d.join("client.key"), false).map_err(io)?;
        let mut peers = Peers::new();
        peers
            .add(proto::identity::public_key(&client), Some("lab-client"))
            .map_err(|e| Error::other(e.to_string()))?;
        peers
            .save(&d.join("peers"))
            .map_err(|e| Error::other(e.to_string()))?;
        secret(&d.join("link.key"), &hex::encode(random::<32>()?))?;
        secret(&d.join("store.key"), &(hex::encode(random::<32>()?) + "\n"))?;
        let dd = d.display();
        let endpoints: Vec<String> = self
            .etcd
            .endpoints()
            .iter()
            .map(|e| format!("\"{e}\""))
            .collect();
        for n in &self.lab.nodes {
            let i = n.number;
            let [c, x] = n.interfaces();
            fs::write(
                d.join(format!("node{i}.toml")),
                format!(
                    r#"interfaces = ["{c}", "{x}"]
attach = "skb"
identity = "{dd}/gateway.key"
peers = "{dd}/peers"
event_log = "{dd}/node{i}-events.jsonl"
control_socket = "{dd}/node{i}.sock"
pin_dir = "{p}"
state_dir = "{dd}/state{i}"
store_key = "{dd}/store.key"
max_sessions = 1024
[exit]
data = "{EXIT}:{EXIT_DATA_PORT}"
link = "{EXIT}:{EXIT_LINK_PORT}"
link_key = "{dd}/link.key"
[pool]
cidr = "10.99.{pool}.0/24"
cidr6 = "fd00:99::{pool}00/120"
[policy]
{policy}
[cluster]
node = {i}
etcd_endpoints = [{e}]
lease_ttl_s = {ttl}
etcd_timeout_ms = {timeout}
"#,
                    p = n.pins.0.display(),
                    pool = i - 1,
                    policy = self.opts.policy,
                    e = endpoints.join(", "),
                    ttl = self.opts.lease_ttl_s,
                    timeout = self.opts.etcd_timeout_ms,
                ),
            )?;
        }
        Ok(())
    }

    fn exit_config(&self) -> Result<exit::Config> {
        exit::ConfigFile {
            listen: Some(SocketAddr::from((EXIT, EXIT_DATA_PORT))),
            link_listen: Some(SocketAddr::from((EXIT, EXIT_LINK_PORT))),
            link_key_file: Some(self.dir.join("link.key")),
            tun_addr: Some(
                format!("{EXIT_TUN}/22")
                    .parse::<ipnet::IpNet>()
                    .map_err(|e| Error::other(format!("{e}")))?,
            ),
            tun_addr6: Some(
                format!("{EXIT_TUN6}/64")
                    .parse::<ipnet::IpNet>()
                    .map_err(|e| Error::other(format!("{e}")))?,
            ),
            ..Default::default()
        }
        .resolve()
        .map_err(|e| Error::other(e.to_string()))
    }

    /// Starts the exit (again, after [`ClusterStack::stop_exit`]): an exit restart
    /// forgets every session's keys; the nodes re-INSTALL them.
    pub fn start_exit(&mut self) -> Result<()> {
        let config = self.exit_config()?;
        self.exit = Some(ExitThread::start(&self.lab.exit.name, config)?);
        Ok(())
    }

    /// Stops the exit: its last counters.
    pub fn stop_exit(&mut self) -> Result<CountersSnapshot> {
        match self.exit.take() {
            Some(mut e) => e.stop(),
            None => Err(Error::other("the exit is not running")),
        }
    }

    /// The running exit (for [`ExitThread::wait_for`]).
    pub fn exit(&self) -> Result<&ExitThread> {
        self.exit
            .as_ref()
            .ok_or_else(|| Error::other("the exit is not running"))
    }

    /// The exit's counters (all zero while it is stopped).
    pub fn exit_counters(&self) -> CountersSnapshot {
        self.exit
            .as_ref()
            .map(ExitThread::counters)
            .unwrap_or_default()
    }

    fn spawn(&mut self, ns: &str, name: &str, args: &[&str]) -> Result<()> {
        let log = self.dir.join(format!("{name}.log"));
        let child = super::netns::spawn_in(ns, &self.bin, args, &self.dir, &log, &[])?;
        self.procs.push((name.to_string(), child));
        Ok(())
    }

    pub fn socket(&self, n: usize) -> PathBuf {
        self.dir.join(format!("node{}.sock", n + 1))
    }

    pub fn client_socket(&self) -> PathBuf {
        self.dir.join("client.sock")
    }

    /// The echo server's (distinct stream packets received, duplicates): a stream
    /// packet the exit delivers twice shows as a duplicate.
    pub fn echo_counts(&self) -> (u64, u64) {
        self.echo
            .as_ref()
            .map(EchoServer::counts)
            .unwrap_or_default()
    }

    /// Starts node `n` (0-based) and waits for its control socket.
    pub fn start_node(&mut self, n: usize) -> Result<()> {
        let name = format!("node{}", n + 1);
        let ns = self.lab.nodes[n].ns.name.clone();
        let cfg = format!("{name}.toml");
        // A socket file left by a killed node would answer nothing.
        let sock = self.socket(n);
        let _ = fs::remove_file(&sock);
        self.spawn(&ns, &name, &["gateway", "--config", &cfg])?;
        let deadline = Instant::now() + Duration::from_secs(15);
        // Answered, not just bound: the socket exists before the node has read its
        // snapshot and resumed; the run loop answers only after that.
        while Client::connect(&sock).and_then(|mut c| c.stats()).is_err() {
            // A gateway that cannot join its cluster (etcd unreachable, no leader)
            // exits saying why; a supervisor would start it again.
            if let Some(status) = self.exited(&name) {
                let log = self.log(&name);
                let last = log.lines().last().unwrap_or_default();
                return Err(Error::other(format!("{name} exited ({status}): {last}")));
            }
            if Instant::now() > deadline {
                return Err(Error::other(format!(
                    "{name}'s control socket did not answer within 15 s\n{}",
                    self.logs()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// The exit status of process `name` if it has exited (it is then forgotten).
    fn exited(&mut self, name: &str) -> Option<std::process::ExitStatus> {
        let i = self.procs.iter().position(|(p, _)| p == name)?;
        let status = self.procs[i].1.try_wait().ok().flatten()?;
        self.procs.remove(i);
        Some(status)
    }

    /// Whether node `n`'s controller runs.
    pub fn node_running(&self, n: usize) -> bool {
        let name = format!("node{}", n + 1);
        self.procs.iter().any(|(p, _)| *p == name)
    }

    /// Node `n`'s links down or up: its host is dead (its pinned relay would go on
    /// forwarding after a controller's `kill -9`, as it is meant to) or back.
    pub fn node_links(&self, n: usize, up: bool) -> Result<()> {
        let node = &self.lab.nodes[n];
        for dev in node.interfaces() {
            node.ns
                .ip(&["link", "set", &dev, if up { "up" } else { "down" }])?;
        }
        Ok(())
    }

    /// `kill -9` of node `n`'s controller.
    pub fn kill_node(&mut self, n: usize) {
        self.kill(&format!("node{}", n + 1));
    }

    fn kill(&mut self, name: &str) {
        if let Some(i) = self.procs.iter().position(|(p, _)| p == name) {
            let (_, mut c) = self.procs.remove(i);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Node `n`'s etcd traffic dropped (`true`) or allowed again.
    pub fn cut_from_etcd(&self, n: usize, cut: bool) -> Result<()> {
        self.lab.cut_from_etcd(n, cut)
    }

    /// The client agent's configuration: one transport with every node in its
    /// gateway list; `extra` goes into the top-level table.
    pub fn client_config(&self, extra: &str) -> Result<String> {
        let gws: Vec<String> = self
            .lab
            .nodes
            .iter()
            .map(|n| format!("\"{}\"", n.addr()))
            .collect();
        let d = self.dir.display();
        let key = proto::identity::load(&self.dir.join("gateway.key"))
            .map_err(|e| Error::other(e.to_string()))?;
        Ok(format!(
            "identity = \"{d}/client.key\"\ngateway_public_key = \"{}\"\n\
             tun_name = \"jvpn0\"\nroutes = [\"10.99.3.0/24\", \"fd00:99::300/120\"]\n\
             control_socket = \"{d}/client.sock\"\nevent_log = \"{d}/client-events.jsonl\"\n\
             {extra}\n[health]\nreturn_after_ms = 1000\nattempt_timeout_ms = 400\nidle_after_ms = 0\n\
             [[transport]]\nname = \"lan\"\nkind = \"ethernet\"\nbind = \"{CLIENT}:{CLIENT_PORT}\"\n\
             interface = \"c-lan\"\ngateways = [{}]\n",
            hex::encode(proto::identity::public_key(&key)),
            gws.join(", ")
        ))
    }

    /// Starts the client agent and waits for its control socket.
    pub fn start_client(&mut self, extra: &str) -> Result<()> {
        let config = self.client_config(extra)?;
        fs::write(self.dir.join("client.toml"), config)?;
        let ns = self.lab.client.name.clone();
        let sock = self.client_socket();
        let _ = fs::remove_file(&sock);
        self.spawn(&ns, "client", &["client", "--config", "client.toml"])?;
        self.wait(
            "the client's control socket",
            Duration::from_secs(15),
            || Client::connect(&sock).is_ok(),
        )
    }

    pub fn kill_client(&mut self) {
        self.kill("client");
    }

    pub fn client_status(&self) -> Option<ClientStatus> {
        let mut c = Client::connect(self.client_socket()).ok()?;
        c.client_status().ok()
    }

    /// The sessions node `n` holds (empty if it is down).
    pub fn sessions(&self, n: usize) -> Vec<SessionInfo> {
        Client::connect(self.socket(n))
            .and_then(|mut c| c.sessions())
            .unwrap_or_default()
    }

    pub fn session(&self, n: usize, id: u64) -> Option<SessionInfo> {
        Client::connect(self.socket(n))
            .ok()?
            .session(SessionId(id))
            .ok()
    }

    /// Node `n`'s counters (`None` if it is down).
    pub fn stats(&self, n: usize) -> Option<Stats> {
        Client::connect(self.socket(n)).ok()?.stats().ok()
    }

    /// A UDP socket in the client's namespace on its tunnel address (the agent's
    /// TUN), for traffic through the tunnel.
    pub fn tunnel_socket(&self) -> Option<UdpSocket> {
        let src = self.client_status()?.tunnel_addr?;
        let src = src.split('/').next().unwrap_or_default().to_string();
        self.lab
            .client
            .run(|| UdpSocket::bind(format!("{src}:0")))
            .ok()
    }

    /// One UDP echo through the tunnel, to the echo server on the exit's TUN address.
    pub fn ping(&self, timeout: Duration) -> bool {
        let Some(sock) = self.tunnel_socket() else {
            return false;
        };
        let _ = sock.set_read_timeout(Some(timeout));
        let Ok(probe) = random::<8>() else {
            return false;
        };
        if sock
            .send_to(&probe, SocketAddr::from((EXIT_TUN, ECHO_PORT)))
            .is_err()
        {
            return false;
        }
        let mut buf = [0u8; 64];
        matches!(sock.recv_from(&mut buf), Ok((8, _)) if buf[..8] == probe)
    }

    /// Polls `ok` until it holds; the error carries every process's last lines.
    pub fn wait(&self, what: &str, within: Duration, mut ok: impl FnMut() -> bool) -> Result<()> {
        let deadline = Instant::now() + within;
        while !ok() {
            if Instant::now() > deadline {
                return Err(Error::other(format!(
                    "timed out after {within:?} waiting for {what}\n{}",
                    self.logs()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    pub fn log(&self, name: &str) -> String {
        fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Each node's events so far.
    pub fn events(&self, n: usize) -> String {
        fs::read_to_string(self.dir.join(format!("node{}-events.jsonl", n + 1))).unwrap_or_default()
    }

    /// Every node's stats, the exit's counters and every process's last lines.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for n in 0..self.lab.nodes.len() {
            if let Some(st) = self.stats(n) {
                s.push_str(&format!("--- node{} stats ---\n{st:?}\n", n + 1));
            }
        }
        s.push_str(&format!(
            "--- exit counters ---\n{}\n",
            self.exit_counters()
        ));
        let mut names: Vec<String> = (1..=self.lab.nodes.len())
            .map(|n| format!("node{n}"))
            .collect();
        names.push("client".into());
        for name in names {
            let l = self.log(&name);
            let tail: Vec<&str> = l.lines().rev().take(40).collect();
            s.push_str(&format!("--- {name} (last lines) ---\n"));
            for line in tail.into_iter().rev() {
                s.push_str(line);
                s.push('\n');
            }
        }
        s
    }
}

impl Drop for ClusterStack {
    fn drop(&mut self) {
        self.echo.take();
        // The client first, so it can close its session.
        for (_, c) in self.procs.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = self.stop_exit();
        let _ = fs::remove_dir_all(&self.dir);
    }
}
