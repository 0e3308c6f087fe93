//! Two gateway nodes of one cluster, the exit, a real etcd and the real client agent,
//! as processes in the cluster lab's namespaces ([`jvpn_ctl::lab::cluster`]).
//! Everything is torn down on drop (processes killed, namespaces and pins removed).

use std::{
    fs,
    io::Write as _,
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use jvpn_ctl::{
    client::ClientStatus,
    control::{
        api::{SessionId, SessionInfo},
        client::Client,
    },
    lab::{
        cluster::{ClusterLab, EXIT},
        etcd::{Etcd, EtcdError},
    },
    proto::{self, Peers},
};
use ring::rand::SecureRandom as _;

use crate::gwlab::jvpn_ctl_bin;

pub const EXIT_TUN: &str = "10.99.3.1";
const ECHO_PORT: u16 = 7000;
const EXIT_DATA_PORT: u16 = 51821;
const EXIT_LINK_PORT: u16 = 51822;

/// Fast timers: a dead node is noticed within a second.
pub const POLICY: &str = "keepalive_interval_ms = 100\ntransport_loss_ttl_ms = 500\n\
candidate_ttl_ms = 1000\nmax_recovery_window_ms = 20000\nmax_switches_per_minute = 60\n";
/// The nodes' lease: a dead node's sessions wait this long for a takeover.
pub const LEASE_TTL_S: u64 = 2;

pub struct ClusterStack {
    pub lab: ClusterLab,
    pub etcd: Etcd,
    pub dir: PathBuf,
    procs: Vec<(String, Child)>,
    echo: Option<jvpn_ctl::lab::traffic::EchoServer>,
}

fn secret(path: &std::path::Path, text: &str) {
    let mut f = fs::File::create(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
}

impl ClusterStack {
    /// `None` (after saying why) when etcd is not installed outside CI.
    pub fn start(tag: &str) -> Option<Self> {
        let lab = ClusterLab::build(tag).expect("building the cluster lab");
        let etcd = match Etcd::start_on(&lab.exit.name, EXIT) {
            Ok(e) => e,
            Err(EtcdError::NotInstalled) if std::env::var("CI").as_deref() != Ok("true") => {
                eprintln!(
                    "SKIPPED {tag}: etcd not installed (cargo xtask test installs etcd-server)"
                );
                return None;
            }
            Err(e) => panic!("starting etcd: {e}"),
        };
        let dir = std::env::temp_dir().join(jvpn_ctl::lab::unique(&format!("jvpn-{tag}-")));
        fs::create_dir_all(&dir).unwrap();
        let mut me = Self {
            lab,
            etcd,
            dir,
            procs: Vec::new(),
            echo: None,
        };
        me.write_configs();
        let exit_ns = me.lab.exit.name.clone();
        me.spawn(&exit_ns, "exit", &["exit", "--config", "exit.toml"]);
        let echo: std::net::SocketAddr = format!("{EXIT_TUN}:{ECHO_PORT}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        me.echo = loop {
            match jvpn_ctl::lab::traffic::EchoServer::start(&me.lab.exit, echo) {
                Ok(e) => break Some(e),
                // The exit's TUN address is not there yet.
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => panic!("echo server on {echo}: {e}\n{}", me.logs()),
            }
        };
        for n in 0..me.lab.nodes.len() {
            me.start_node(n);
        }
        Some(me)
    }

    fn write_configs(&self) {
        let d = &self.dir;
        proto::identity::generate(&d.join("gateway.key"), false).unwrap();
        let client = proto::identity::generate(&d.join("client.key"), false).unwrap();
        let mut peers = Peers::new();
        peers
            .add(proto::identity::public_key(&client), Some("lab-client"))
            .unwrap();
        peers.save(&d.join("peers")).unwrap();
        let mut k = [0u8; 32];
        ring::rand::SystemRandom::new().fill(&mut k).unwrap();
        secret(&d.join("link.key"), &hex::encode(k));
        ring::rand::SystemRandom::new().fill(&mut k).unwrap();
        secret(&d.join("store.key"), &(hex::encode(k) + "\n"));
        let dd = d.display();
        fs::write(
            d.join("exit.toml"),
            format!(
                "listen = \"{EXIT}:{EXIT_DATA_PORT}\"\nlink_listen = \"{EXIT}:{EXIT_LINK_PORT}\"\n\
                 link_key_file = \"{dd}/link.key\"\ntun_addr = \"{EXIT_TUN}/22\"\n"
            ),
        )
        .unwrap();
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
[policy]
{POLICY}
[cluster]
node = {i}
etcd_endpoints = ["{e}"]
lease_ttl_s = {LEASE_TTL_S}
etcd_timeout_ms = 500
"#,
                    p = n.pins.0.display(),
                    pool = i - 1,
                    e = self.etcd.endpoint(),
                ),
            )
            .unwrap();
        }
    }

    fn spawn(&mut self, ns: &str, name: &str, args: &[&str]) {
        let log = fs::File::create(self.dir.join(format!("{name}.log"))).unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ns}"))
            .arg(jvpn_ctl_bin())
            .args(args)
            .current_dir(&self.dir)
            .env(
                "JVPN_LOG",
                std::env::var("JVPN_LOG").unwrap_or("info".into()),
            )
            .stdin(Stdio::null())
            .process_group(0)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.procs.push((name.to_string(), child));
    }

    pub fn socket(&self, n: usize) -> PathBuf {
        self.dir.join(format!("node{}.sock", n + 1))
    }

    /// Starts node `n` (0-based) and waits for its control socket.
    pub fn start_node(&mut self, n: usize) {
        let name = format!("node{}", n + 1);
        let ns = self.lab.nodes[n].ns.name.clone();
        let cfg = format!("{name}.toml");
        self.spawn(&ns, &name, &["gateway", "--config", &cfg]);
        let sock = self.socket(n);
        self.wait(
            &format!("{name}'s control socket"),
            Duration::from_secs(15),
            || Client::connect(&sock).is_ok(),
        );
    }

    /// Node `n`'s links down or up: its host is dead (its pinned relay would go on
    /// forwarding after a controller's `kill -9`, as it is meant to) or back.
    pub fn node_links(&self, n: usize, up: bool) {
        let node = &self.lab.nodes[n];
        for dev in node.interfaces() {
            node.ns
                .ip(&["link", "set", &dev, if up { "up" } else { "down" }])
                .unwrap();
        }
    }

    /// `kill -9` of node `n`'s controller.
    pub fn kill_node(&mut self, n: usize) {
        let name = format!("node{}", n + 1);
        if let Some(i) = self.procs.iter().position(|(p, _)| *p == name) {
            let (_, mut c) = self.procs.remove(i);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn start_client(&mut self, extra: &str) {
        let gws: Vec<String> = self
            .lab
            .nodes
            .iter()
            .map(|n| format!("\"{}\"", n.addr()))
            .collect();
        let d = self.dir.display();
        let gateway_pub = proto::identity::public_key(
            &proto::identity::load(&self.dir.join("gateway.key")).unwrap(),
        );
        fs::write(
            self.dir.join("client.toml"),
            format!(
                "identity = \"{d}/client.key\"\ngateway_public_key = \"{}\"\n\
                 tun_name = \"jvpn0\"\nroutes = [\"10.99.3.0/24\"]\n\
                 control_socket = \"{d}/client.sock\"\nevent_log = \"{d}/client-events.jsonl\"\n\
                 [health]\nreturn_after_ms = 1000\nattempt_timeout_ms = 400\n{extra}\n\
                 [[transport]]\nname = \"lan\"\nkind = \"ethernet\"\nbind = \"{}:40000\"\n\
                 interface = \"c-lan\"\ngateways = [{}]\n",
                hex::encode(gateway_pub),
                jvpn_ctl::lab::cluster::CLIENT,
                gws.join(", ")
            ),
        )
        .unwrap();
        let ns = self.lab.client.name.clone();
        self.spawn(&ns, "client", &["client", "--config", "client.toml"]);
        let sock = self.dir.join("client.sock");
        self.wait(
            "the client's control socket",
            Duration::from_secs(15),
            || Client::connect(&sock).is_ok(),
        );
    }

    pub fn client_status(&self) -> Option<ClientStatus> {
        let mut c = Client::connect(self.dir.join("client.sock")).ok()?;
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

    /// One UDP echo through the tunnel, to the echo server on the exit's TUN address.
    pub fn ping(&self, timeout: Duration) -> bool {
        let Some(src) = self.client_status().and_then(|c| c.tunnel_addr) else {
            return false;
        };
        let src = src.split('/').next().unwrap_or_default().to_string();
        let echo: std::net::SocketAddr = format!("{EXIT_TUN}:{ECHO_PORT}").parse().unwrap();
        let Ok(sock) = self
            .lab
            .client
            .run(|| std::net::UdpSocket::bind(format!("{src}:0")))
        else {
            return false;
        };
        let _ = sock.set_read_timeout(Some(timeout));
        let probe: [u8; 8] = crate::tclient::random();
        if sock.send_to(&probe, echo).is_err() {
            return false;
        }
        let mut buf = [0u8; 64];
        matches!(sock.recv_from(&mut buf), Ok((8, _)) if buf[..8] == probe)
    }

    pub fn wait(&self, what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
        let deadline = Instant::now() + within;
        while !ok() {
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self, name: &str) -> String {
        fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    pub fn logs(&self) -> String {
        let mut s = String::new();
        for n in 0..self.lab.nodes.len() {
            if let Ok(st) = Client::connect(self.socket(n)).and_then(|mut c| c.stats()) {
                s.push_str(&format!("--- node{} stats ---\n{st:?}\n", n + 1));
            }
        }
        for name in ["node1", "node2", "exit", "client"] {
            let l = self.log(name);
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
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        self.echo.take();
        // The client first, so it can close its session.
        for (_, c) in self.procs.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}
