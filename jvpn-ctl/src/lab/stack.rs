//! The whole product running in the lab of DESIGN §8: exit, gateway and client agent
//! as real `jvpn-ctl` processes in their namespaces (under `nsenter`), with keys,
//! allow-list and configuration written to a private state directory.
//!
//! Everything is stopped and removed when the [`Stack`] is dropped, also on a failed
//! test or an interrupted run, unless it was [`Stack::detach`]ed (`--keep`); then
//! [`down`] (`jvpn-ctl lab down`) removes it later from its state file.

use std::{
    fs,
    io::{Error, Result},
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant},
};

use ring::rand::SecureRandom as _;
use serde::{Deserialize, Serialize};

use super::{
    gateway::{GatewayLab, LabOptions, Transport},
    netns::PinDir,
    unique,
};
use crate::{
    control::Client,
    datapath::{AttachMode, Datapath, DatapathConfig, PASS_PROGRAM},
    proto::{self, Peers},
};

pub const EXIT_DATA: &str = "10.77.9.2:51821";
pub const EXIT_LINK: &str = "10.77.9.2:51822";
/// The exit's tunnel address; clients' are assigned from 10.99.0.0/22 (room for the
/// 1,000-session restart test).
pub const EXIT_TUN: &str = "10.99.0.1";
/// The exit's IPv6 tunnel address: the lab's tunnel is dual-stack (the gateway's
/// `pool.cidr6`, the exit's `tun_addr6`).
pub const EXIT_TUN6: &str = "fd00:99::1";
/// The IPv6 pool beside 10.99.0.0/22.
pub const POOL6: &str = "fd00:99::/64";
/// The gateway's Prometheus endpoint, inside its namespace.
pub const METRICS: &str = "10.77.9.1:9851";
/// Where detached labs keep their state (`jvpn-ctl lab down` looks here).
pub const STATE_ROOT: &str = "/run/jvpn-lab";

/// What a detached lab left behind, for `lab down`.
#[derive(Debug, Serialize, Deserialize)]
pub struct LabState {
    pub namespaces: Vec<String>,
    pub pids: Vec<u32>,
    pub pin_dirs: Vec<PathBuf>,
    pub dir: PathBuf,
}

pub struct Stack {
    pub lab: GatewayLab,
    pub dir: PathBuf,
    /// The gateway's control socket.
    pub socket: PathBuf,
    /// The client agent's control socket.
    pub client_socket: PathBuf,
    pub gateway_pub: [u8; 32],
    pub client_key: PathBuf,
    bin: PathBuf,
    procs: Vec<(&'static str, Child)>,
    /// Keeps `xdp_pass` on the veths that receive native redirects (pinned, so a
    /// detached lab keeps working after this process exits).
    peers: Option<Datapath>,
    peer_pins: Option<PinDir>,
}

fn write_secret(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text)?;
    fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
}

impl Stack {
    /// Builds the lab under `dir_root` and starts exit and gateway; `policy` is the
    /// body of the gateway's TOML `[policy]` table; `bin` is the `jvpn-ctl` to run.
    pub fn start(tag: &str, dir_root: &Path, bin: &Path, policy: &str) -> Result<Self> {
        Self::start_with(tag, dir_root, bin, policy, LabOptions::default())
    }

    /// [`Stack::start`] on a lab built as `opts` asks (e.g. with a NAT router on the
    /// Wi-Fi path).
    pub fn start_with(
        tag: &str,
        dir_root: &Path,
        bin: &Path,
        policy: &str,
        opts: LabOptions,
    ) -> Result<Self> {
        let lab = GatewayLab::build_with(tag, opts)?;
        let dir = dir_root.join(unique(&format!("jvpn-{tag}-")));
        fs::create_dir_all(&dir)?;
        let gw =
            proto::identity::generate(&dir.join("gateway.key"), false).map_err(Error::other)?;
        let client_key = dir.join("client.key");
        let client = proto::identity::generate(&client_key, false).map_err(Error::other)?;
        let mut peers = Peers::new();
        peers
            .add(proto::identity::public_key(&client), Some("lab-client"))
            .map_err(Error::other)?;
        peers.save(&dir.join("peers")).map_err(Error::other)?;
        let mut link_key = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut link_key)
            .map_err(|_| Error::other("no randomness"))?;
        write_secret(&dir.join("link.key"), &hex::encode(link_key))?;
        let socket = dir.join("jvpn.sock");
        let d = dir.display();
        fs::write(
            dir.join("exit.toml"),
            format!(
                "listen = \"{EXIT_DATA}\"\nlink_listen = \"{EXIT_LINK}\"\n\
                 link_key_file = \"{d}/link.key\"\ntun_addr = \"{EXIT_TUN}/22\"\n\
                 tun_addr6 = \"{EXIT_TUN6}/64\"\n"
            ),
        )?;
        fs::write(
            dir.join("gateway.toml"),
            format!(
                r#"interfaces = ["g-wifi", "g-lte", "g-exit"]
identity = "{d}/gateway.key"
peers = "{d}/peers"
event_log = "{d}/gateway-events.jsonl"
control_socket = "{s}"
pin_dir = "{p}"
state_dir = "{d}/state"
max_sessions = 1024
metrics = "{METRICS}"
[exit]
data = "{EXIT_DATA}"
link = "{EXIT_LINK}"
link_key = "{d}/link.key"
[pool]
cidr = "10.99.0.0/22"
cidr6 = "{POOL6}"
reserved = ["{EXIT_TUN}", "{EXIT_TUN6}"]
[policy]
{policy}
"#,
                s = socket.display(),
                p = lab.pins.0.display()
            ),
        )?;

        let peer_pins = PinDir::new(&format!("{tag}p"));
        let mut peers_dp = Datapath::load(DatapathConfig {
            pin_dir: peer_pins.0.clone(),
            max_sessions: 16,
            ..DatapathConfig::default()
        })
        .map_err(Error::other)?;
        for (ns, dev) in lab.redirect_targets() {
            ns.run(|| peers_dp.attach_pinned(PASS_PROGRAM, dev, AttachMode::Native))
                .map_err(Error::other)?;
        }

        let mut me = Self {
            client_socket: dir.join("client.sock"),
            gateway_pub: proto::identity::public_key(&gw),
            client_key,
            socket,
            bin: bin.to_path_buf(),
            procs: Vec::new(),
            peers: Some(peers_dp),
            peer_pins: Some(peer_pins),
            lab,
            dir,
        };
        let exit_ns = me.lab.exit.name.clone();
        me.spawn(&exit_ns, "exit", &["exit", "--config", "exit.toml"])?;
        // The gateway's key delivery needs the exit's link socket.
        me.wait_for("the exit's link socket", |me| {
            me.lab
                .exit
                .run(|| std::net::UdpSocket::bind(EXIT_LINK).is_err())
        })?;
        let gw_ns = me.lab.gw.name.clone();
        me.spawn(&gw_ns, "gateway", &["gateway", "--config", "gateway.toml"])?;
        me.wait_for("the gateway's control socket", |me| {
            Client::connect(&me.socket).is_ok()
        })?;
        Ok(me)
    }

    /// The client configuration for `transports` (most preferred first); `extra` is
    /// appended to the top level (before the transport tables).
    pub fn client_config(&self, transports: &[Transport], extra: &str) -> String {
        let d = self.dir.display();
        let mut s = format!(
            "identity = \"{d}/client.key\"\ngateway_public_key = \"{}\"\n\
             tun_name = \"jvpn0\"\nroutes = [\"10.99.0.0/24\", \"{POOL6}\"]\n\
             control_socket = \"{}\"\nevent_log = \"{d}/client-events.jsonl\"\n{extra}\n",
            hex::encode(self.gateway_pub),
            self.client_socket.display(),
        );
        for t in transports {
            let kind = if *t == Transport::Wifi {
                "wifi"
            } else {
                "cellular"
            };
            s.push_str(&format!(
                "\n[[transport]]\nname = \"{}\"\nkind = \"{kind}\"\nbind = \"{}\"\n\
                 interface = \"{}\"\ngateway = \"{}\"\n",
                t.name(),
                self.lab.client_addr(*t),
                t.client_dev(),
                t.gw_addr()
            ));
        }
        s
    }

    /// Writes `client.toml` and starts the client agent in the client namespace.
    pub fn start_client(&mut self, config: &str) -> Result<()> {
        self.start_client_with_env(config, &[])
    }

    /// As [`Stack::start_client`], with extra environment for the agent (e.g.
    /// libfaketime's, to put its clock off).
    pub fn start_client_with_env(&mut self, config: &str, env: &[(&str, &str)]) -> Result<()> {
        fs::write(self.dir.join("client.toml"), config)?;
        let ns = self.lab.client.name.clone();
        self.spawn_env(&ns, "client", &["client", "--config", "client.toml"], env)?;
        self.wait_for("the client's control socket", |me| {
            Client::connect(&me.client_socket).is_ok()
        })
    }

    fn spawn(&mut self, ns: &str, name: &'static str, args: &[&str]) -> Result<()> {
        self.spawn_env(ns, name, args, &[])
    }

    fn spawn_env(
        &mut self,
        ns: &str,
        name: &'static str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<()> {
        // A fresh log per start, as before (the cluster stack appends across restarts).
        let path = self.dir.join(format!("{name}.log"));
        fs::File::create(&path)?;
        let child = super::netns::spawn_in(ns, &self.bin, args, &self.dir, &path, env)
            .map_err(|e| Error::other(format!("starting the {name}: {e}")))?;
        self.procs.push((name, child));
        Ok(())
    }

    fn wait_for(&mut self, what: &str, ready: impl Fn(&Self) -> bool) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !ready(self) {
            for (name, child) in &mut self.procs {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(Error::other(format!(
                        "the {name} exited ({status}) while waiting for {what}; its log:\n{}",
                        fs::read_to_string(self.dir.join(format!("{name}.log")))
                            .unwrap_or_default()
                    )));
                }
            }
            if Instant::now() > deadline {
                return Err(Error::other(format!("timed out waiting for {what}")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    pub fn log(&self, name: &str) -> String {
        fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// `Some(status)` once the process has exited.
    pub fn exited(&mut self, name: &str) -> Option<std::process::ExitStatus> {
        self.procs
            .iter_mut()
            .find(|(n, _)| *n == name)
            .and_then(|(_, c)| c.try_wait().ok().flatten())
    }

    /// Stops the exit or the gateway (SIGKILL with `kill`, else SIGTERM) and starts it
    /// again with the same configuration; returns when it serves again.
    pub fn restart(&mut self, name: &'static str, kill: bool) -> Result<()> {
        self.restart_with_env(name, kill, &[])
    }

    /// As [`Stack::restart`], with extra environment for the new process (the
    /// gateway's test-only fault points).
    pub fn restart_with_env(
        &mut self,
        name: &'static str,
        kill: bool,
        env: &[(&str, &str)],
    ) -> Result<()> {
        if let Some(i) = self.procs.iter().position(|(n, _)| *n == name) {
            let (_, mut c) = self.procs.remove(i);
            if kill {
                let _ = c.kill();
                let _ = c.wait();
            } else {
                stop(c);
            }
        }
        match name {
            "exit" => {
                let ns = self.lab.exit.name.clone();
                self.spawn_env(&ns, "exit", &["exit", "--config", "exit.toml"], env)?;
                self.wait_for("the exit's link socket", |me| {
                    me.lab
                        .exit
                        .run(|| std::net::UdpSocket::bind(EXIT_LINK).is_err())
                })
            }
            "gateway" => {
                let ns = self.lab.gw.name.clone();
                let args = ["gateway", "--config", "gateway.toml"];
                self.spawn_env(&ns, "gateway", &args, env)?;
                self.wait_for("the gateway's control socket", |me| {
                    Client::connect(&me.socket).is_ok()
                })
            }
            _ => Err(Error::other(format!("cannot restart {name:?}"))),
        }
    }

    /// SIGTERM, then SIGKILL after 5 s.
    /// The process id of `name`, while it runs.
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.procs
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, c)| c.id())
    }

    pub fn stop(&mut self, name: &str) {
        if let Some(i) = self.procs.iter().position(|(n, _)| *n == name) {
            let (_, c) = self.procs.remove(i);
            stop(c);
        }
    }

    pub fn gateway(&self) -> Result<Client> {
        Client::connect(&self.socket).map_err(Error::other)
    }

    pub fn client(&self) -> Result<Client> {
        Client::connect(&self.client_socket).map_err(Error::other)
    }

    /// Leaves everything running and records it under [`STATE_ROOT`] for `lab down`.
    pub fn detach(mut self) -> Result<PathBuf> {
        let state = LabState {
            namespaces: self
                .lab
                .namespaces()
                .iter()
                .map(|n| n.name.clone())
                .collect(),
            pids: self.procs.iter().map(|(_, c)| c.id()).collect(),
            pin_dirs: vec![
                self.lab.pins.0.clone(),
                self.peer_pins
                    .as_ref()
                    .map(|p| p.0.clone())
                    .unwrap_or_default(),
            ],
            dir: self.dir.clone(),
        };
        let root = Path::new(STATE_ROOT);
        fs::create_dir_all(root)?;
        let path = root.join(format!("{}.json", self.lab.gw.name));
        fs::write(
            &path,
            serde_json::to_string_pretty(&state).map_err(Error::other)?,
        )?;
        // Disarm every guard: the processes, namespaces and pins stay.
        self.procs.clear();
        std::mem::forget(self.peers.take());
        std::mem::forget(self.peer_pins.take());
        let _ = std::mem::ManuallyDrop::new(self);
        Ok(path)
    }
}

fn stop(mut c: Child) {
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

impl Drop for Stack {
    fn drop(&mut self) {
        // Client first (it CLOSEs its session), then gateway, then exit.
        for name in ["client", "gateway", "exit"] {
            self.stop(name);
        }
        for (_, c) in self.procs.drain(..) {
            stop(c);
        }
        let _ = fs::remove_dir_all(&self.dir);
        // The lab's namespaces and pin directories go with their guards.
    }
}

/// Removes the labs left by `--keep` (all of them, or the one named `only`): stops
/// their processes, deletes their namespaces, pins and state. Returns what was
/// removed, one line per lab.
pub fn down(only: Option<&str>) -> Result<Vec<String>> {
    let mut done = Vec::new();
    let Ok(entries) = fs::read_dir(STATE_ROOT) else {
        return Ok(done);
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().is_none_or(|x| x != "json")
            || only.is_some_and(|n| path.file_stem().is_none_or(|s| s != n))
        {
            continue;
        }
        let state: LabState = serde_json::from_str(&fs::read_to_string(&path)?)
            .map_err(|err| Error::other(format!("{}: {err}", path.display())))?;
        for pid in &state.pids {
            // SAFETY: plain signal delivery; a pid that is gone is fine.
            unsafe { libc::kill(*pid as i32, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while state
            .pids
            .iter()
            .any(|p| Path::new(&format!("/proc/{p}")).exists())
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        for ns in &state.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
        for p in &state.pin_dirs {
            let _ = fs::remove_dir_all(p);
        }
        let _ = fs::remove_dir_all(&state.dir);
        fs::remove_file(&path)?;
        done.push(format!(
            "removed lab {} (namespaces {})",
            path.file_stem().unwrap_or_default().to_string_lossy(),
            state.namespaces.join(", ")
        ));
    }
    Ok(done)
}
