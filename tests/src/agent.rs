//! The real client agent (`jvpn-ctl client`) in the lab, with the gateway and exit:
//! start it, read its status and events, take its links down and up, and run tunnel
//! traffic through its TUN.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use jvpn_ctl::{
    client::ClientStatus,
    control::api::EventRecord,
    lab::{
        gateway::{LabOptions, Transport},
        traffic::{EchoServer, Stream},
    },
    session::State,
};

use crate::gwlab::{EXIT_TUN, GwLab};

/// Fast timers so that deaths and recoveries take well under a second.
pub const FAST_POLICY: &str = "keepalive_interval_ms = 100\ntransport_loss_ttl_ms = 500\n\
candidate_ttl_ms = 1000\nmax_recovery_window_ms = 10000\nidle_loss_ttl_ms = 500\n";

/// Client health settings matching [`FAST_POLICY`].
pub const FAST_HEALTH: &str = "[health]\nreturn_after_ms = 1000\nattempt_timeout_ms = 400\n";

pub const ECHO_PORT: u16 = 7000;

pub struct AgentLab {
    pub gw: GwLab,
    pub echo: EchoServer,
}

impl std::ops::Deref for AgentLab {
    type Target = GwLab;
    fn deref(&self) -> &GwLab {
        &self.gw
    }
}

impl std::ops::DerefMut for AgentLab {
    fn deref_mut(&mut self) -> &mut GwLab {
        &mut self.gw
    }
}

impl AgentLab {
    /// Gateway + exit with `policy` (appended to [`FAST_POLICY`]), an echo server
    /// on the exit's tunnel address, and the client agent over `transports` (most
    /// preferred first) with `client_extra` in its configuration; waits for ATTACHED.
    pub fn start(tag: &str, policy: &str, transports: &[Transport], client_extra: &str) -> Self {
        Self::start_with(tag, policy, transports, client_extra, LabOptions::default())
    }

    /// As [`AgentLab::start`], with the lab's options (a NAT on the Wi-Fi path).
    pub fn start_with(
        tag: &str,
        policy: &str,
        transports: &[Transport],
        client_extra: &str,
        opts: LabOptions,
    ) -> Self {
        Self::start_edited(tag, policy, transports, client_extra, opts, |c| c)
    }

    /// As [`AgentLab::start_with`], with the client's configuration passed through
    /// `edit` before it starts.
    pub fn start_edited(
        tag: &str,
        policy: &str,
        transports: &[Transport],
        client_extra: &str,
        opts: LabOptions,
        edit: impl FnOnce(String) -> String,
    ) -> Self {
        // The test's keys replace the fast defaults (TOML refuses a key twice).
        let keys: Vec<&str> = policy
            .lines()
            .filter_map(|l| l.split('=').next())
            .map(str::trim)
            .collect();
        let fast: String = FAST_POLICY
            .lines()
            .filter(|l| !keys.contains(&l.split('=').next().unwrap_or("").trim()))
            .map(|l| format!("{l}\n"))
            .collect();
        let mut gw = GwLab::start_with(tag, &format!("{fast}{policy}"), opts);
        let echo = EchoServer::start(&gw.lab.exit, echo_addr()).expect("echo server");
        let client_extra = never_idle(client_extra);
        let cfg = edit(gw.client_config(transports, &client_extra));
        gw.start_client(&cfg).expect("starting the client agent");
        let me = Self { gw, echo };
        me.wait_status("the session to be ATTACHED", Duration::from_secs(10), |s| {
            s.state == State::Attached
        });
        me
    }

    pub fn status(&self) -> ClientStatus {
        self.gw
            .client()
            .and_then(|mut c| c.client_status().map_err(std::io::Error::other))
            .expect("client status")
    }

    pub fn wait_status(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&ClientStatus) -> bool,
    ) -> ClientStatus {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status();
            if pred(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; client status: {s:#?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn client_events(&self) -> Vec<EventRecord> {
        self.gw
            .client()
            .and_then(|mut c| c.events().map_err(std::io::Error::other))
            .expect("client events")
    }

    /// The agent's event log on disk (readable after it stopped).
    pub fn client_events_from_log(&self) -> Vec<EventRecord> {
        std::fs::read_to_string(self.gw.dir.join("client-events.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("an event line"))
            .collect()
    }

    /// Takes the client side of `t`'s link down or up.
    pub fn link(&self, t: Transport, up: bool) {
        self.gw
            .lab
            .client
            .ip(&[
                "link",
                "set",
                t.client_dev(),
                if up { "up" } else { "down" },
            ])
            .expect("ip link set");
    }

    /// Drops `pct` % (at random, nftables `numgen`) of what transport `t` sends to
    /// the gateway, in the client namespace; 100 also drops what comes back (a
    /// black hole with the link up). Replaces any earlier rule; 0 removes it.
    pub fn lossy(&self, t: Transport, pct: u32) {
        self.gw.lab.lossy(t, pct).expect("nft");
    }

    /// A numbered UDP stream through the tunnel to the exit's echo server.
    pub fn stream(&self, interval: Duration) -> Stream {
        Stream::start(&self.gw.lab.client, echo_addr(), interval).expect("stream")
    }

    pub fn session_id(&self) -> u64 {
        self.status().session_id.expect("a session").0
    }

    /// `jvpn-ctl client move NAME` through the agent's socket.
    pub fn move_to(&self, t: Transport) {
        self.gw
            .client()
            .and_then(|mut c| c.move_to(t.name()).map_err(std::io::Error::other))
            .expect("client move");
    }

    /// Waits until every transport has been probed and answered healthy, so that a
    /// switch has somewhere to go.
    pub fn wait_all_healthy(&self) -> ClientStatus {
        self.wait_status("every transport healthy", Duration::from_secs(5), |s| {
            s.transports
                .iter()
                .all(|t| t.health == jvpn_ctl::client::health::Status::Healthy)
        })
    }

    /// Waits for `n` more echoes of `stream` than it has now: traffic is flowing.
    pub fn wait_traffic(&self, stream: &Stream, n: u64) {
        let want = stream.echoed() + n;
        if let Err(r) = stream.wait_echoed(want, Duration::from_secs(5)) {
            panic!(
                "{n} more echoes did not come back within 5 s: {r:?}; client status: {:#?}",
                self.status()
            );
        }
    }

    /// Waits until the agent is ATTACHED over `t` with no reattach under way.
    pub fn wait_bound(&self, t: Transport, timeout: Duration) -> ClientStatus {
        self.wait_status(
            &format!("the session bound to {}", t.name()),
            timeout,
            |s| {
                s.bound.as_deref() == Some(t.name())
                    && s.state == State::Attached
                    && s.reattach.is_none()
            },
        )
    }

    /// The relay's `stale_binding` drop counter.
    pub fn stale_drops(&self) -> u64 {
        self.gw
            .stats()
            .xdp_drops
            .get("stale_binding")
            .copied()
            .unwrap_or(0)
    }

    /// A socket for an attacker on the LTE network (10.77.2.3, another address than
    /// the client's), in the client namespace.
    pub fn attacker(&self) -> std::net::UdpSocket {
        let ns = &self.gw.lab.client;
        ns.ip(&["addr", "add", "10.77.2.3/24", "dev", "c-lte"])
            .expect("attacker address");
        let s = ns
            .run(|| std::net::UdpSocket::bind("10.77.2.3:0"))
            .expect("attacker socket");
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        s
    }
}

pub fn echo_addr() -> SocketAddr {
    SocketAddr::new(EXIT_TUN.parse().unwrap(), ECHO_PORT)
}

/// The agent's `[health]` with `idle_after_ms = 0` unless the test set it: the fast
/// gateway timers of [`FAST_POLICY`] judge every silence by the short TTL (its
/// `idle_loss_ttl_ms` is the loss TTL), so the agent must keep the fast keepalive
/// schedule too, as it does while data flows (docs/client.md, "Keepalive schedule").
pub fn never_idle(client_extra: &str) -> String {
    if client_extra.contains("idle_after_ms") {
        return client_extra.to_string();
    }
    match client_extra.find("[health]\n") {
        Some(at) => {
            let end = at + "[health]\n".len();
            format!(
                "{}idle_after_ms = 0\n{}",
                &client_extra[..end],
                &client_extra[end..]
            )
        }
        None => format!("{client_extra}\n[health]\nidle_after_ms = 0\n"),
    }
}
