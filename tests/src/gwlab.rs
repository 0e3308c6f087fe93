//! A running gateway and exit (and optionally the client agent), as real processes,
//! in the three-namespace lab: [`jvpn_ctl::lab::stack::Stack`] plus test
//! conveniences. The daemons' logs are printed when a test fails.

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

pub use jvpn_ctl::lab::stack::{EXIT_DATA, EXIT_LINK, EXIT_TUN, METRICS};
use jvpn_ctl::{
    control::{
        api::{EventRecord, Request, SessionId, SessionInfo, Stats},
        client::Client,
    },
    datapath::Pinned,
    lab::{gateway::LabOptions, stack::Stack},
    proto,
};
use ring::signature::Ed25519KeyPair;

/// Path of the `jvpn-ctl` binary of the same build: next to a binary of this crate
/// (`target/<profile>/`), or one level up from a test executable (`.../deps/`).
pub fn jvpn_ctl_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().expect("target/<profile>[/deps]");
    let beside = dir.join("jvpn-ctl");
    let bin = if beside.is_file() {
        beside
    } else {
        dir.parent().unwrap_or(dir).join("jvpn-ctl")
    };
    assert!(
        bin.exists(),
        "{} missing: run `cargo xtask test`",
        bin.display()
    );
    bin
}

pub struct GwLab {
    pub stack: Stack,
    pub client_id: Ed25519KeyPair,
}

impl std::ops::Deref for GwLab {
    type Target = Stack;
    fn deref(&self) -> &Stack {
        &self.stack
    }
}

impl std::ops::DerefMut for GwLab {
    fn deref_mut(&mut self) -> &mut Stack {
        &mut self.stack
    }
}

impl GwLab {
    /// Builds the lab and starts exit and gateway; `policy` is the body of a TOML
    /// `[policy]` table.
    pub fn start(tag: &str, policy: &str) -> Self {
        Self::start_with(tag, policy, LabOptions::default())
    }

    /// As [`GwLab::start`], with the lab's options (a NAT on the Wi-Fi path).
    pub fn start_with(tag: &str, policy: &str, opts: LabOptions) -> Self {
        let stack = Stack::start_with(tag, &std::env::temp_dir(), &jvpn_ctl_bin(), policy, opts)
            .expect("starting the lab");
        let client_id = proto::identity::load(&stack.client_key).unwrap();
        Self { stack, client_id }
    }

    /// Room for `n` sessions: a bigger pool at both ends and a bigger map, on fresh
    /// pins (the gateway and the exit are restarted).
    pub fn make_room(&mut self, n: usize) -> anyhow::Result<()> {
        self.stack.stop("gateway");
        let exit_cfg = self.dir.join("exit.toml");
        let text = std::fs::read_to_string(&exit_cfg)?.replace("/22\"", "/12\"");
        std::fs::write(&exit_cfg, text)?;
        self.stack.restart("exit", false)?;
        let cfg = self.dir.join("gateway.toml");
        let text = std::fs::read_to_string(&cfg)?
            .replace(
                "max_sessions = 1024",
                &format!("max_sessions = {}", n + 1024),
            )
            .replace("cidr = \"10.99.0.0/22\"", "cidr = \"10.96.0.0/12\"");
        std::fs::write(&cfg, text)?;
        for f in std::fs::read_dir(&self.lab.pins.0)? {
            std::fs::remove_file(f?.path())?;
        }
        self.stack.restart("gateway", false)?;
        Ok(())
    }

    /// `n` sessions established one after the other over `sock` (to the Wi-Fi gateway
    /// address), each with its MAC key; progress every 10,000 on stderr.
    pub fn establish(
        &self,
        sock: &std::net::UdpSocket,
        n: usize,
    ) -> anyhow::Result<Vec<(proto::ClientSession, ring::hmac::Key)>> {
        let t = std::time::Instant::now();
        let mut sessions = Vec::with_capacity(n);
        while sessions.len() < n {
            let gw = jvpn_ctl::lab::gateway::Transport::Wifi.gw_addr();
            let s = crate::tclient::try_handshake(sock, gw, &self.client_id, &self.gateway_pub, 20)
                .map_err(|e| anyhow::anyhow!("handshake {}: {e}", sessions.len()))?;
            let mac = s.keys.mac_key();
            sessions.push((s, mac));
            if sessions.len() % 10_000 == 0 {
                eprintln!("{} sessions in {:.1?}", sessions.len(), t.elapsed());
            }
        }
        let listed = self.sessions().len();
        anyhow::ensure!(listed == n, "the gateway lists {listed} of {n} sessions");
        Ok(sessions)
    }

    pub fn control(&self) -> Client {
        Client::connect(&self.socket).expect("connecting to the control socket")
    }

    pub fn sessions(&self) -> Vec<SessionInfo> {
        self.control().sessions().unwrap()
    }

    pub fn session(&self, id: u64) -> Option<SessionInfo> {
        self.control().session(SessionId(id)).ok()
    }

    /// (state, version, generation, binding) of the session: what a reattach changes.
    pub fn gw_view(&self, id: u64) -> (jvpn_ctl::session::State, u64, u32, Option<String>) {
        let s = self.session(id).expect("session at the gateway");
        (s.state, s.version, s.generation, s.binding)
    }

    /// A UDP socket in the client namespace bound to `addr` (port 0: any), with a
    /// read timeout.
    pub fn client_udp(&self, addr: &str, timeout: Duration) -> std::net::UdpSocket {
        let s = self
            .lab
            .client
            .run(|| std::net::UdpSocket::bind(addr))
            .unwrap_or_else(|e| panic!("binding {addr} in the client namespace: {e}"));
        s.set_read_timeout(Some(timeout)).unwrap();
        s
    }

    pub fn stats(&self) -> Stats {
        self.control().stats().unwrap()
    }

    pub fn events(&self) -> Vec<EventRecord> {
        self.control().events().unwrap()
    }

    pub fn request(&self, r: &Request) -> serde_json::Value {
        self.control().request(r).unwrap()
    }

    /// Waits until an event matching `pred` has been published.
    pub fn wait_event(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&EventRecord) -> bool,
    ) -> EventRecord {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.events().into_iter().find(|e| pred(e)) {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} event within {timeout:?}; events: {:#?}",
                self.events()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sessions in the data plane's map (read through the pins).
    pub fn map_sessions(&self) -> usize {
        Pinned::open(&self.lab.pins.0)
            .map(|p| p.session_count())
            .unwrap_or(0)
    }

    /// `GET /metrics` from inside the gateway's namespace.
    pub fn metrics(&self) -> String {
        use std::io::{Read as _, Write as _};
        let mut s = self
            .lab
            .gw
            .run(|| std::net::TcpStream::connect(METRICS))
            .expect("connecting to the metrics endpoint");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    /// Runs `jvpn-ctl ARGS --socket <this lab's socket>`.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(jvpn_ctl_bin())
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .output()
            .unwrap()
    }

    pub fn gateway_alive(&mut self) -> bool {
        self.stack.exited("gateway").is_none()
    }
}

impl Drop for GwLab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for name in ["client", "gateway", "exit"] {
                eprintln!("--- {name} log ---\n{}", self.stack.log(name));
            }
        }
    }
}
