//! The cluster lab's running product ([`jvpn_ctl::lab::cluster_stack`]) for tests:
//! started or skipped (etcd not installed, outside CI), every wait a panic with every
//! process's last lines, and those lines printed when a test fails.

use std::{
    ops::{Deref, DerefMut},
    time::Duration,
};

use jvpn_ctl::{
    lab::{
        cluster::CLIENT,
        cluster_stack::{self, ClusterOptions, ClusterStackError},
        etcd::EtcdError,
        etcd_view,
    },
    proto::{self, Body, Control},
    session::Detail,
};

use crate::{
    gwlab::jvpn_ctl_bin,
    tclient::{TestClient, Via},
};

pub use jvpn_ctl::lab::cluster_stack::{ECHO_PORT, EXIT_TUN};

/// The nodes' lease in the tests: a dead node's sessions wait this long.
pub const LEASE_TTL_S: u64 = 2;

pub struct ClusterStack(cluster_stack::ClusterStack);

impl ClusterStack {
    /// Two nodes and one etcd member; `None` (after saying why) when etcd is not
    /// installed outside CI.
    pub fn start(tag: &str) -> Option<Self> {
        Self::start_with(tag, ClusterOptions::default())
    }

    pub fn start_with(tag: &str, opts: ClusterOptions) -> Option<Self> {
        assert_eq!(opts.lease_ttl_s, LEASE_TTL_S, "the tests' bounds assume it");
        match cluster_stack::ClusterStack::start(tag, &std::env::temp_dir(), &jvpn_ctl_bin(), opts)
        {
            Ok(s) => Some(Self(s)),
            Err(ClusterStackError::Etcd(EtcdError::NotInstalled))
                if std::env::var("CI").as_deref() != Ok("true") =>
            {
                eprintln!(
                    "SKIPPED {tag}: etcd not installed (cargo xtask test installs etcd-server)"
                );
                None
            }
            Err(e) => panic!("starting the cluster stack: {e}"),
        }
    }

    /// A protocol-level client with a socket on each of the client's `ports`, its
    /// session established over the first one with node `n`.
    pub fn test_client(&self, ports: &[u16], n: usize) -> TestClient {
        let key = proto::identity::load(&self.dir.join("client.key")).unwrap();
        let gw = proto::identity::load(&self.dir.join("gateway.key")).unwrap();
        let binds: Vec<_> = ports
            .iter()
            .map(|&p| std::net::SocketAddr::from((CLIENT, p)))
            .collect();
        TestClient::connect_in(
            &self.lab.client,
            &binds,
            Via(0, self.lab.nodes[n].addr()),
            &key,
            &proto::identity::public_key(&gw),
            EXIT_TUN,
        )
    }

    /// What etcd holds, read directly (a few tries: a member just killed may have
    /// been the leader).
    pub fn etcd_view(&self) -> etcd_view::View {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match etcd_view::read(
                &self.lab.exit.name,
                &self.etcd.endpoints(),
                jvpn_ctl::cluster::DEFAULT_ROOT,
                Duration::from_secs(3),
            ) {
                Ok(v) => return v,
                Err(e) if std::time::Instant::now() > deadline => panic!("reading etcd: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    pub fn wait(&self, what: &str, within: Duration, ok: impl FnMut() -> bool) {
        self.0
            .wait(what, within, ok)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    pub fn start_node(&mut self, n: usize) {
        self.0
            .start_node(n)
            .unwrap_or_else(|e| panic!("starting node {}: {e}", n + 1));
    }

    /// As [`ClusterStack::start_node`], the error returned (the node exited).
    pub fn try_start_node(&mut self, n: usize) -> std::io::Result<()> {
        self.0.start_node(n)
    }

    pub fn start_client(&mut self, extra: &str) {
        self.0
            .start_client(extra)
            .unwrap_or_else(|e| panic!("starting the client: {e}"));
    }

    /// Starts the client agent and waits until its session is attached (through
    /// node 1, the first of its gateways) and carries traffic: the session's id.
    pub fn start_attached_client(&mut self) -> u64 {
        self.start_client("");
        self.wait(
            "the session through node 1",
            Duration::from_secs(15),
            || {
                self.client_status()
                    .is_some_and(|c| c.state == jvpn_ctl::session::State::Attached)
                    && self.ping(Duration::from_millis(500))
            },
        );
        self.client_status()
            .and_then(|c| c.session_id)
            .expect("an attached client has a session")
            .0
    }

    pub fn node_links(&self, n: usize, up: bool) {
        self.0.node_links(n, up).unwrap();
    }

    pub fn cut_from_etcd(&self, n: usize, cut: bool) {
        self.0.cut_from_etcd(n, cut).unwrap();
    }
}

/// The reason of a REATTACH_DENIED (`None`: some other answer, or none).
pub fn denied(reply: &Option<Control>) -> Option<Detail> {
    match reply.as_ref().map(|c| &c.body) {
        Some(Body::ReattachDenied { reason }) => Detail::from_code(*reason),
        _ => None,
    }
}

impl Deref for ClusterStack {
    type Target = cluster_stack::ClusterStack;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DerefMut for ClusterStack {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for ClusterStack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.0.logs());
        }
    }
}
