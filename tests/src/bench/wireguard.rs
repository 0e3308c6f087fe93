//! The baseline of the `tunnel` phase: wireguard-go (Debian's `wireguard-go`, the
//! userspace WireGuard, configured with `wg` from `wireguard-tools`) over the very
//! namespaces and veths the jvpn lab uses ([`GatewayLab::build`]: client ⇄ gateway on
//! the Wi-Fi veth, gateway ⇄ exit, the same addresses, MTUs and offloads). The
//! gateway namespace forwards with the kernel instead of the XDP relay; one
//! wireguard-go runs in the client namespace and one in the exit's.
//!
//! Everything is removed on drop, also when the phase fails or is interrupted: the
//! two wireguard-go processes are killed, their UAPI sockets and the keys deleted, and
//! the namespaces go with the lab.

use std::{
    fs,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use jvpn_ctl::lab::gateway::GatewayLab;

use super::stopped;

/// What wireguard-go refuses to run without when the kernel could do WireGuard.
const WG_ENV: (&str, &str) = ("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1");
/// WireGuard's UDP port at both ends.
const WG_PORT: u16 = 51820;
/// Where wireguard-go puts its UAPI sockets (one per interface, shared by every
/// namespace: hence the unique interface names).
const UAPI_DIR: &str = "/var/run/wireguard";
/// The client's tunnel address; the exit's is the jvpn lab's [`super::tunnel::EXIT_TUN`].
pub const CLIENT_TUN: &str = "10.99.0.2";
/// The largest inner MTU WireGuard allows over an IPv4 path of 1500 bytes (20 IP +
/// 8 UDP + 32 WireGuard framing).
pub const MAX_MTU: u16 = 1440;

pub struct WgLab {
    /// wireguard-go in the client namespace, then in the exit's (killed first on
    /// drop: fields drop in order).
    procs: Vec<Child>,
    /// The two interface names (their UAPI sockets are removed on drop).
    pub ifaces: [String; 2],
    keys: PathBuf,
    pub lab: GatewayLab,
    pub mtu: u16,
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `wg genkey` into `dir/name.key`; returns the public key.
fn keypair(dir: &Path, name: &str) -> Result<(PathBuf, String)> {
    let private = run(Command::new("wg").arg("genkey"))?;
    let path = dir.join(format!("{name}.key"));
    fs::write(&path, format!("{private}\n"))?;
    fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let mut child = Command::new("wg")
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("spawning wg pubkey")?;
    std::io::Write::write_all(
        child.stdin.as_mut().expect("piped"),
        format!("{private}\n").as_bytes(),
    )?;
    drop(child.stdin.take());
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("wg pubkey failed");
    }
    Ok((
        path,
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    ))
}

impl WgLab {
    /// Builds the namespaces (tag: a few letters), starts wireguard-go at both ends
    /// with inner MTU `mtu`, and configures the peers and routes. The tunnel carries
    /// traffic once this returns (the first handshake happens on the first packet).
    pub fn start(tag: &str, mtu: u16) -> Result<Self> {
        let lab = GatewayLab::build(tag).context("building the namespaces")?;
        let keys = std::env::temp_dir().join(crate::unique(&format!("jvpn-{tag}-wg")));
        fs::create_dir_all(&keys)?;
        let ifaces = [
            crate::unique(&format!("{tag}c")),
            crate::unique(&format!("{tag}x")),
        ];
        let mut me = Self {
            procs: Vec::new(),
            ifaces,
            keys,
            lab,
            mtu,
        };
        me.configure()?;
        Ok(me)
    }

    fn configure(&mut self) -> Result<()> {
        let (client, gw, exit) = (&self.lab.client, &self.lab.gw, &self.lab.exit);
        // Plain routing across the gateway namespace.
        gw.sysctl("net.ipv4.ip_forward", "1")?;
        client.ip(&[
            "route",
            "add",
            "10.77.9.0/24",
            "via",
            "10.77.1.1",
            "dev",
            "c-wifi",
        ])?;
        exit.ip(&[
            "route",
            "add",
            "10.77.1.0/24",
            "via",
            "10.77.9.1",
            "dev",
            "x-gw",
        ])?;

        let (ckey, cpub) = keypair(&self.keys, "client")?;
        let (xkey, xpub) = keypair(&self.keys, "exit")?;
        let log = |name: &str| -> Result<fs::File> {
            Ok(fs::File::create(self.keys.join(format!("{name}.log")))?)
        };
        for (ns, iface) in [(client, &self.ifaces[0]), (exit, &self.ifaces[1])] {
            let log = log(iface)?;
            let child = Command::new("ip")
                .args(["netns", "exec", &ns.name, "wireguard-go", "-f", iface])
                .env(WG_ENV.0, WG_ENV.1)
                .env("LOG_LEVEL", "error")
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                // Its own process group: a Ctrl-C reaches the bench, which stops it.
                .process_group(0)
                .spawn()
                .context("starting wireguard-go (Debian package wireguard-go)")?;
            self.procs.push(child);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for (ns, iface) in [(client, &self.ifaces[0]), (exit, &self.ifaces[1])] {
            let sock = Path::new(UAPI_DIR).join(format!("{iface}.sock"));
            while ns.ip(&["link", "show", "dev", iface]).is_err() || !sock.exists() {
                stopped()?;
                for c in &mut self.procs {
                    if let Ok(Some(status)) = c.try_wait() {
                        bail!(
                            "wireguard-go exited ({status}): {}",
                            fs::read_to_string(self.keys.join(format!("{iface}.log")))
                                .unwrap_or_default()
                                .trim()
                        );
                    }
                }
                if Instant::now() > deadline {
                    bail!("wireguard-go did not create {iface} within 10 s");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let port = WG_PORT.to_string();
        let exit_tun = format!("{}/32", super::tunnel::EXIT_TUN);
        let client_tun = format!("{CLIENT_TUN}/32");
        for (ns, iface, key, peer, endpoint, allowed) in [
            (
                client,
                &self.ifaces[0],
                &ckey,
                &xpub,
                "10.77.9.2",
                &exit_tun,
            ),
            (
                exit,
                &self.ifaces[1],
                &xkey,
                &cpub,
                "10.77.1.2",
                &client_tun,
            ),
        ] {
            let key = key.to_string_lossy();
            let endpoint = format!("{endpoint}:{WG_PORT}");
            ns.exec(
                "wg",
                &[
                    "set",
                    iface,
                    "private-key",
                    &key,
                    "listen-port",
                    &port,
                    "peer",
                    peer,
                    "endpoint",
                    &endpoint,
                    "allowed-ips",
                    allowed,
                ],
            )
            .context("wg set")?;
        }
        let mtu = self.mtu.to_string();
        for (ns, iface, addr) in [
            (client, &self.ifaces[0], format!("{CLIENT_TUN}/24")),
            (
                exit,
                &self.ifaces[1],
                format!("{}/24", super::tunnel::EXIT_TUN),
            ),
        ] {
            ns.ip(&["addr", "add", &addr, "dev", iface])?;
            ns.ip(&["link", "set", iface, "mtu", &mtu, "up"])?;
        }
        Ok(())
    }

    /// wireguard-go's log of one end (what it printed: errors only).
    pub fn log(&self, end: usize) -> String {
        fs::read_to_string(self.keys.join(format!("{}.log", self.ifaces[end]))).unwrap_or_default()
    }

    /// Fails when a wireguard-go has exited.
    pub fn check(&mut self) -> Result<()> {
        for (i, c) in self.procs.iter_mut().enumerate() {
            if let Ok(Some(status)) = c.try_wait() {
                bail!("wireguard-go exited ({status}): {}", self.log(i).trim());
            }
        }
        Ok(())
    }
}

/// `wireguard-go --version`'s first line, e.g. `wireguard-go v0.0.20220316`.
pub fn version() -> Option<String> {
    let out = Command::new("wireguard-go")
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_string())
}

impl Drop for WgLab {
    fn drop(&mut self) {
        for mut c in self.procs.drain(..) {
            // SAFETY: a signal to our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        for iface in &self.ifaces {
            let _ = fs::remove_file(Path::new(UAPI_DIR).join(format!("{iface}.sock")));
        }
        let _ = fs::remove_dir_all(&self.keys);
        // The namespaces (and the wireguard-go interfaces in them) go with the lab.
    }
}
