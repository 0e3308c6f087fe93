//! A running gateway and exit, as real processes, in the three-namespace lab.
//!
//! Keys, peers and configuration are written to a private directory; the gateway
//! (`jvpn-ctl gateway`) and the exit (`jvpn-ctl exit`) run under `nsenter` in their
//! namespaces; the control socket lives in the directory (Unix sockets are not
//! namespaced). Everything is stopped and removed on drop, also when a test fails,
//! and the daemons' logs are printed if it did.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use jvpn_ctl::{
    control::{
        api::{EventRecord, Request, SessionId, SessionInfo, Stats},
        client::Client,
    },
    datapath::{AttachMode, Datapath, DatapathConfig, PASS_PROGRAM, Pinned},
    lab::{gateway::GatewayLab, netns::PinDir, unique},
    proto::{self, Peers},
};
use ring::{rand::SecureRandom as _, signature::Ed25519KeyPair};

pub const EXIT_DATA: &str = "10.77.9.2:51821";
pub const EXIT_LINK: &str = "10.77.9.2:51822";
pub const EXIT_TUN: &str = "10.99.0.1";
/// The gateway's Prometheus endpoint, inside its namespace.
pub const METRICS: &str = "10.77.9.1:9851";

/// Path of the `jvpn-ctl` binary next to the test executable.
pub fn jvpn_ctl_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps")
        .join("jvpn-ctl");
    assert!(
        bin.exists(),
        "{} missing: run `cargo xtask test`",
        bin.display()
    );
    bin
}

pub struct GwLab {
    pub lab: GatewayLab,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub gateway_pub: [u8; 32],
    pub client_id: Ed25519KeyPair,
    gateway: Option<Child>,
    exit: Option<Child>,
    /// Keeps `xdp_pass` on the veths that receive native redirects.
    _peers: Datapath,
    _peer_pins: PinDir,
}

impl GwLab {
    /// Builds the lab and starts exit and gateway; `policy` is the body of a TOML
    /// `[policy]` table.
    pub fn start(tag: &str, policy: &str) -> Self {
        let lab = GatewayLab::build(tag).expect("building the lab");
        let dir = std::env::temp_dir().join(unique(&format!("jvpn-{tag}-")));
        fs::create_dir_all(&dir).unwrap();
        let gw_key = dir.join("gateway.key");
        let client_key = dir.join("client.key");
        let gw = proto::identity::generate(&gw_key, false).unwrap();
        proto::identity::generate(&client_key, false).unwrap();
        let client_id = proto::identity::load(&client_key).unwrap();
        let mut peers = Peers::new();
        peers
            .add(proto::identity::public_key(&client_id), Some("test-client"))
            .unwrap();
        peers.save(&dir.join("peers")).unwrap();
        let mut link_key = [0u8; 32];
        ring::rand::SystemRandom::new().fill(&mut link_key).unwrap();
        fs::write(dir.join("link.key"), hex::encode(link_key)).unwrap();
        fs::set_permissions(
            dir.join("link.key"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let socket = dir.join("jvpn.sock");
        fs::write(
            dir.join("exit.toml"),
            format!(
                "listen = \"{EXIT_DATA}\"\nlink_listen = \"{EXIT_LINK}\"\nlink_key_file = \"{d}/link.key\"\ntun_addr = \"{EXIT_TUN}/24\"\n",
                d = dir.display()
            ),
        )
        .unwrap();
        fs::write(
            dir.join("gateway.toml"),
            format!(
                r#"interfaces = ["g-wifi", "g-lte", "g-exit"]
identity = "{d}/gateway.key"
peers = "{d}/peers"
event_log = "{d}/events.jsonl"
control_socket = "{s}"
pin_dir = "{p}"
max_sessions = 1024
metrics = "{METRICS}"
[exit]
data = "{EXIT_DATA}"
link = "{EXIT_LINK}"
link_key = "{d}/link.key"
[pool]
cidr = "10.99.0.0/24"
reserved = ["{EXIT_TUN}"]
[policy]
{policy}
"#,
                d = dir.display(),
                s = socket.display(),
                p = lab.pins.0.display()
            ),
        )
        .unwrap();

        let peer_pins = PinDir::new(&format!("{tag}p"));
        let mut peers_dp = Datapath::load(DatapathConfig {
            pin_dir: peer_pins.0.clone(),
            max_sessions: 16,
            ..DatapathConfig::default()
        })
        .expect("loading xdp_pass");
        for (ns, dev) in lab.redirect_targets() {
            ns.run(|| peers_dp.attach_unpinned(PASS_PROGRAM, dev, AttachMode::Native))
                .expect("attaching xdp_pass");
        }

        let mut me = Self {
            exit: None,
            gateway: None,
            gateway_pub: proto::identity::public_key(&gw),
            client_id,
            socket,
            _peers: peers_dp,
            _peer_pins: peer_pins,
            lab,
            dir,
        };
        me.exit = Some(me.spawn(
            &me.lab.exit.name,
            "exit",
            &["exit", "--config"],
            "exit.toml",
        ));
        // The gateway's key delivery needs the exit's link socket.
        me.wait_for(
            |me| {
                me.lab
                    .exit
                    .run(|| std::net::UdpSocket::bind(EXIT_LINK).is_err())
            },
            "exit link socket",
        );
        me.gateway = Some(me.spawn(
            &me.lab.gw.name,
            "gateway",
            &["gateway", "--config"],
            "gateway.toml",
        ));
        me.wait_for(
            |me| Client::connect(&me.socket).is_ok(),
            "gateway control socket",
        );
        me
    }

    fn spawn(&self, ns: &str, name: &str, args: &[&str], config: &str) -> Child {
        let log = fs::File::create(self.dir.join(format!("{name}.log"))).unwrap();
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ns}"))
            .arg(jvpn_ctl_bin())
            .args(args)
            .arg(self.dir.join(config))
            .env("JVPN_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting the {name}: {e}"))
    }

    fn wait_for(&mut self, ready: impl Fn(&Self) -> bool, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !ready(self) {
            let mut died = None;
            for (name, child) in [("exit", &mut self.exit), ("gateway", &mut self.gateway)] {
                if let Some(c) = child
                    && let Ok(Some(status)) = c.try_wait()
                {
                    died = Some((name, status));
                }
            }
            if let Some((name, status)) = died {
                panic!(
                    "the {name} exited ({status}) while waiting for the {what}:\n{}",
                    self.log(name)
                );
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for the {what}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self, name: &str) -> String {
        fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
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
        matches!(self.gateway.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

fn stop(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        // SAFETY: sending a signal to our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for GwLab {
    fn drop(&mut self) {
        stop(&mut self.gateway);
        stop(&mut self.exit);
        if std::thread::panicking() {
            eprintln!("--- gateway log ---\n{}", self.log("gateway"));
            eprintln!("--- exit log ---\n{}", self.log("exit"));
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}
