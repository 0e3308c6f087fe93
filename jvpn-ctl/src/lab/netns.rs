//! Network namespaces and interfaces created with iproute2 and removed on drop, also
//! when a test fails or the demo is interrupted (the guards run as the stack unwinds).

use std::{
    fs::File,
    path::Path,
    process::{Command, Output},
};

use std::io::{Error, Result};

fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .output()
        .map_err(|e| Error::new(e.kind(), format!("spawning {cmd:?}: {e}")))?;
    if !out.status.success() {
        return Err(Error::other(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out)
}

/// `ip ARGS...`, failing with its stderr.
pub fn ip(args: &[&str]) -> Result<String> {
    let out = run(Command::new("ip").args(args))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: String) -> Result<Self> {
        ip(&["netns", "add", &name])?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n NS ARGS...`
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// Runs a program inside the namespace.
    pub fn exec(&self, prog: &str, args: &[&str]) -> Result<Output> {
        run(Command::new("ip")
            .args(["netns", "exec", &self.name, prog])
            .args(args))
    }

    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec("sysctl", &["-qw", &format!("{key}={value}")])
            .map(drop)
    }

    /// Runs `f` on a thread that has entered this namespace (setns is per thread), so
    /// sockets, interface names and the FIB it sees are the namespace's.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        run_in(&self.name, f)
    }

    pub fn ifindex(&self, iface: &str) -> Result<u32> {
        let out = self.ip(&["-o", "link", "show", "dev", iface])?;
        out.split(':')
            .next()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| Error::other(format!("no ifindex in `{out}`")))
    }

    pub fn mac(&self, iface: &str) -> Result<[u8; 6]> {
        let out = self.ip(&["-o", "link", "show", "dev", iface])?;
        let word = out
            .split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .ok_or_else(|| Error::other(format!("{iface} has no MAC")))?;
        let mut mac = [0u8; 6];
        for (m, part) in mac.iter_mut().zip(word.split(':')) {
            *m = u8::from_str_radix(part, 16).map_err(Error::other)?;
        }
        Ok(mac)
    }

    /// A permanent neighbour entry: `addr` is at `mac` on `dev` (no ARP/ND on a
    /// measured or replayed path).
    pub fn neigh_permanent(&self, addr: &str, mac: &str, dev: &str) -> Result<()> {
        self.ip(&[
            "neigh",
            "replace",
            addr,
            "lladdr",
            mac,
            "dev",
            dev,
            "nud",
            "permanent",
        ])
        .map(drop)
    }

    /// The MAC as `aa:bb:cc:dd:ee:ff`.
    pub fn mac_str(&self, iface: &str) -> Result<String> {
        Ok(self
            .mac(iface)?
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":"))
    }
}

/// [`Netns::run`] for a namespace this code does not own (by its name).
pub fn run_in<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/run/netns/{name}");
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = File::open(&path).expect("open netns");
            // On this thread only (setns is per thread).
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("setns {path}: {e}"));
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace destroys the veth ends inside it, and so their peers.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A veth pair: `a` in namespace `ns_a`, `b` in `ns_b` (the same one is allowed).
pub fn veth(ns_a: &Netns, a: &str, ns_b: &Netns, b: &str) -> Result<()> {
    ip(&[
        "link", "add", a, "netns", &ns_a.name, "type", "veth", "peer", "name", b, "netns",
        &ns_b.name,
    ])?;
    ns_a.ip(&["link", "set", a, "up"])?;
    ns_b.ip(&["link", "set", b, "up"])?;
    Ok(())
}

/// A veth pair like [`veth`], with `queues` transmit and receive queues on both ends
/// (a veth picks the peer's receive ring by the sending CPU, so one queue per sending
/// CPU keeps CPUs off each other's rings). Left down, for the caller to address.
pub fn veth_queues(ns_a: &Netns, a: &str, ns_b: &Netns, b: &str, queues: usize) -> Result<()> {
    let q = queues.max(1).to_string();
    ip(&[
        "link",
        "add",
        a,
        "netns",
        &ns_a.name,
        "numtxqueues",
        &q,
        "numrxqueues",
        &q,
        "type",
        "veth",
        "peer",
        "name",
        b,
        "netns",
        &ns_b.name,
        "numtxqueues",
        &q,
        "numrxqueues",
        &q,
    ])
    .map(drop)
}

/// A pin directory on bpffs for one test, removed on drop.
pub struct PinDir(pub std::path::PathBuf);

impl PinDir {
    pub fn new(tag: &str) -> Self {
        Self(std::path::PathBuf::from(format!(
            "/sys/fs/bpf/{}",
            super::unique(&format!("jvpn-{tag}-"))
        )))
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts `bin args` inside the namespace `ns` (under `nsenter`, which execs it: the
/// child is the program itself), in `dir`, its output appended to `log`, with the
/// caller's `JVPN_LOG` (default `info`) and `env`. It gets its own process group:
/// a Ctrl-C reaches the lab's owner, which stops the lab's processes in order.
pub fn spawn_in(
    ns: &str,
    bin: &Path,
    args: &[&str],
    dir: &Path,
    log: &Path,
    env: &[(&str, &str)],
) -> Result<std::process::Child> {
    use std::os::unix::process::CommandExt as _;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .arg(bin)
        .args(args)
        .current_dir(dir)
        .env(
            "JVPN_LOG",
            std::env::var("JVPN_LOG").unwrap_or("info".into()),
        )
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .process_group(0)
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
}
