//! A real single-member etcd on 127.0.0.1, for the store's tests and, later, the
//! cluster lab: the etcd backend is tested against the server it will run on, not a
//! mock.
//!
//! [`Etcd::start`] runs Debian's `etcd` (package `etcd-server`) on two free ports
//! with a fresh data directory under the system temp dir, and returns once it
//! answers a client request. [`Etcd::kill`] and [`Etcd::restart`] crash it and bring
//! it back on the same ports and data. Dropping it kills the process and removes the
//! directory, also when a test panics.

use std::{
    collections::VecDeque,
    io::{self, BufRead as _, BufReader, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, ChildStderr, Command, ExitStatus, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

/// How long etcd may take to serve after it was started. A single member elects
/// itself in about a second; a loaded CI machine gets the rest.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How often a start is tried again on new ports: the ports are free when picked but
/// not reserved, so another process can take one before etcd binds it.
const START_ATTEMPTS: u32 = 3;

/// Lines of etcd's log kept for error messages.
const LOG_TAIL: usize = 40;

/// The most writes one batch of the store may carry, and some margin: every write is
/// one compare and one operation of a transaction, and etcd refuses a transaction
/// with more than `--max-txn-ops` (default 128) in any of its parts. The gateway
/// commits up to 256 writes at once.
pub const MAX_TXN_OPS: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd not found: install Debian's etcd-server (cargo xtask test does)")]
    NotInstalled,

    #[error("{what}: {cause}")]
    Io { what: String, cause: io::Error },

    #[error("etcd ({bin}) exited ({status}) before it served; its last output:\n{log}")]
    Exited {
        bin: PathBuf,
        status: ExitStatus,
        log: String,
    },

    #[error("etcd ({bin}) did not serve within {after:?}; its last output:\n{log}")]
    NotReady {
        bin: PathBuf,
        after: Duration,
        log: String,
    },
}

/// A running etcd member, or one stopped by [`Etcd::kill`].
pub struct Etcd {
    bin: PathBuf,
    /// Ours, removed on drop; etcd's data directory is `data` inside it.
    dir: PathBuf,
    name: String,
    client: SocketAddr,
    peer: SocketAddr,
    child: Option<Child>,
    log: Arc<Mutex<VecDeque<String>>>,
    /// The network namespace it runs in (its 127.0.0.1 is that namespace's); `None`:
    /// this process's.
    netns: Option<String>,
    /// `--initial-cluster` (every member's name and peer URL) and its token.
    cluster: String,
    token: String,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd")
            .field("endpoint", &self.endpoint())
            .field("dir", &self.dir)
            .field("pid", &self.pid())
            .finish_non_exhaustive()
    }
}

impl Etcd {
    /// Starts a new single-member cluster and waits until it serves.
    pub fn start() -> Result<Self, EtcdError> {
        Self::start_with(None)
    }

    /// As [`Etcd::start`], inside the network namespace `netns` (on its loopback: a
    /// lab gateway in that namespace reaches it at [`Etcd::endpoint`]).
    pub fn start_in(netns: &str) -> Result<Self, EtcdError> {
        Self::start_with(Some(netns.to_owned()))
    }

    /// As [`Etcd::start_in`], listening on `host`, an address of that namespace that
    /// other namespaces reach (the cluster lab's gateways).
    pub fn start_on(netns: &str, host: Ipv4Addr) -> Result<Self, EtcdError> {
        Self::start_at(Some(netns.to_owned()), host)
    }

    fn start_with(netns: Option<String>) -> Result<Self, EtcdError> {
        Self::start_at(netns, Ipv4Addr::LOCALHOST)
    }

    fn start_at(netns: Option<String>, host: Ipv4Addr) -> Result<Self, EtcdError> {
        let bin = find_etcd().ok_or(EtcdError::NotInstalled)?;
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let name = format!("jvpn-{}-{n}", std::process::id());
        let dir = std::env::temp_dir().join(format!("jvpn-etcd-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|cause| EtcdError::Io {
            what: format!("creating {}", dir.display()),
            cause,
        })?;
        let mut etcd = Self {
            bin,
            dir,
            name,
            client: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            peer: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            child: None,
            log: Arc::default(),
            netns,
            cluster: String::new(),
            token: String::new(),
        };
        let mut attempt = 1;
        loop {
            let ports = etcd.in_netns(|| free_ports(host, 2))?;
            (etcd.client, etcd.peer) = (ports[0], ports[1]);
            etcd.cluster = format!("{}=http://{}", etcd.name, etcd.peer);
            etcd.token.clone_from(&etcd.name);
            match etcd.spawn_and_wait() {
                Err(EtcdError::Exited { log, .. })
                    if attempt < START_ATTEMPTS && log.contains("address already in use") =>
                {
                    // The member's peer URL is written into its data on first start:
                    // the next ports need a new directory.
                    let _ = std::fs::remove_dir_all(etcd.data_dir());
                    attempt += 1;
                }
                r => return r.map(|()| etcd),
            }
        }
    }

    /// The client URL, for `EtcdStore::connect`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.client)
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// SIGKILL, then reaps it: a crash, no clean shutdown. Its data stays for
    /// [`Etcd::restart`].
    pub fn kill(&mut self) -> Result<(), EtcdError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = child.id();
        let io = |what: &str| {
            let what = format!("{what} etcd (pid {pid})");
            move |cause| EtcdError::Io { what, cause }
        };
        child.kill().map_err(io("killing"))?;
        child.wait().map_err(io("reaping"))?;
        Ok(())
    }

    /// SIGSTOP: etcd keeps its sockets but answers nothing, as a hung or
    /// partitioned member does. [`Etcd::resume`] undoes it.
    pub fn pause(&self) -> Result<(), EtcdError> {
        self.signal(libc::SIGSTOP, "pausing")
    }

    /// SIGCONT, after [`Etcd::pause`].
    pub fn resume(&self) -> Result<(), EtcdError> {
        self.signal(libc::SIGCONT, "resuming")
    }

    fn signal(&self, sig: libc::c_int, what: &str) -> Result<(), EtcdError> {
        let io = |cause| EtcdError::Io {
            what: format!("{what} etcd"),
            cause,
        };
        let pid = self
            .pid()
            .ok_or_else(|| io(io::Error::other("not running")))?;
        let pid = libc::pid_t::try_from(pid).map_err(|e| io(io::Error::other(e)))?;
        // SAFETY: plain syscall on our own child, which is not reaped yet (a reaped
        // child is `None` above), so the pid cannot name another process.
        if unsafe { libc::kill(pid, sig) } != 0 {
            return Err(io(io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Starts the member again on the same ports and data (after [`Etcd::kill`]; a
    /// running one is killed first) and waits until it serves.
    pub fn restart(&mut self) -> Result<(), EtcdError> {
        self.kill()?;
        self.spawn_and_wait()
    }

    /// Whether it answers `/health` (it does once the cluster has a leader) within
    /// `within`.
    pub fn serving(&self, within: Duration) -> bool {
        let (client, deadline) = (self.client, Instant::now() + within);
        // A member without a leader answers at once, unhealthy: ask until it is not.
        self.in_netns(|| {
            while !healthy(client, deadline) {
                if Instant::now() >= deadline {
                    return false;
                }
                thread::sleep(Duration::from_millis(20));
            }
            true
        })
    }

    /// The last lines etcd logged.
    pub fn log_tail(&self) -> String {
        tail(&self.log)
    }

    /// `f` on a thread in etcd's namespace (this one's when it has none).
    fn in_netns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        match &self.netns {
            None => f(),
            Some(name) => super::netns::run_in(name, f),
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn spawn_and_wait(&mut self) -> Result<(), EtcdError> {
        let r = self
            .spawn()
            .and_then(|lines| self.wait_until_serving(&lines));
        if r.is_err() {
            let _ = self.kill();
        }
        r
    }

    /// Starts the process; the receiver hears of every line it logs.
    fn spawn(&mut self) -> Result<mpsc::Receiver<()>, EtcdError> {
        let mut child = self.command().spawn().map_err(|cause| EtcdError::Io {
            what: format!("starting {}", self.bin.display()),
            cause,
        })?;
        let stderr = child.stderr.take();
        self.child = Some(child);
        stderr
            .ok_or_else(|| io::Error::other("stderr not piped"))
            .and_then(|stderr| drain(stderr, Arc::clone(&self.log)))
            .map_err(|cause| EtcdError::Io {
                what: "reading etcd's output".into(),
                cause,
            })
    }

    fn command(&self) -> Command {
        let client = self.endpoint();
        let peer = format!("http://{}", self.peer);
        // `ip netns exec` enters the namespace and execs etcd: the child is etcd
        // itself (its pid, its death signal), no wrapper stays behind.
        let mut cmd = match &self.netns {
            None => Command::new(&self.bin),
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.bin);
                c
            }
        };
        cmd.arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.token])
            .args(["--max-txn-ops", &MAX_TXN_OPS.to_string()])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // etcd refuses to start when a flag is also set as ETCD_* in the environment;
        // ours are the ones that count.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ETCD_") {
                cmd.env_remove(k);
            }
        }
        if let Some(arch) = unsupported_arch() {
            cmd.env("ETCD_UNSUPPORTED_ARCH", arch);
        }
        // SAFETY: prctl is async-signal-safe and touches only the child.
        unsafe {
            // A test binary that dies without unwinding (SIGKILL, abort) takes its etcd
            // along instead of leaving it running. The signal follows the thread that
            // spawned etcd: keep an `Etcd` on the thread that started it.
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }

    /// Each line etcd logs is a moment to ask whether it serves: it logs while it
    /// starts, elects itself and begins serving, and its client port is bound before
    /// it begins, so the request made after its last startup line waits in the
    /// listen queue until it answers. No polling interval to guess.
    fn wait_until_serving(&mut self, lines: &mpsc::Receiver<()>) -> Result<(), EtcdError> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(()) => {
                    let client = self.client;
                    if self.in_netns(|| healthy(client, deadline)) {
                        return Ok(());
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(EtcdError::NotReady {
                        bin: self.bin.clone(),
                        after: START_TIMEOUT,
                        log: self.log_tail(),
                    });
                }
                // Its stderr closed: it exited.
                Err(mpsc::RecvTimeoutError::Disconnected) => return Err(self.exited()),
            }
        }
    }

    fn exited(&mut self) -> EtcdError {
        let status = self.child.take().map(|mut c| c.wait());
        match status {
            Some(Ok(status)) => EtcdError::Exited {
                bin: self.bin.clone(),
                status,
                log: self.log_tail(),
            },
            Some(Err(cause)) => EtcdError::Io {
                what: "waiting for etcd".into(),
                cause,
            },
            None => EtcdError::Io {
                what: "waiting for etcd".into(),
                cause: io::Error::other("not running"),
            },
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        // A paused etcd dies of SIGKILL all the same.
        let _ = self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `etcd` on PATH, else where Debian installs it (PATH may be a test runner's).
fn find_etcd() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("etcd"))
        .chain([PathBuf::from("/usr/bin/etcd")])
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// etcd 3.4 runs only on amd64 and ppc64le unless ETCD_UNSUPPORTED_ARCH names the
/// architecture it runs on (Go's name for it).
fn unsupported_arch() -> Option<&'static str> {
    match std::env::consts::ARCH {
        "x86_64" => None,
        "aarch64" => Some("arm64"),
        "x86" => Some("386"),
        "powerpc64" => Some("ppc64le"),
        other => Some(other),
    }
}

/// Two distinct ports free on 127.0.0.1 now: both listeners are held until both are
/// picked, so the kernel cannot hand out the same one twice.
fn free_ports(host: Ipv4Addr, n: usize) -> Result<Vec<SocketAddr>, EtcdError> {
    // All held at once, so no two are the same.
    (0..n)
        .map(|_| TcpListener::bind((host, 0)))
        .collect::<io::Result<Vec<_>>>()
        .and_then(|ls| ls.iter().map(TcpListener::local_addr).collect())
        .map_err(|cause| EtcdError::Io {
            what: format!("picking a free port on {host}"),
            cause,
        })
}

/// A cluster of real etcd members on 127.0.0.1, for quorum loss: kill a majority
/// of [`EtcdCluster::members`] and every write must fail; restart them and it serves.
pub struct EtcdCluster {
    pub members: Vec<Etcd>,
}

impl EtcdCluster {
    /// Starts `n` members of one new cluster and waits until each serves (which
    /// needs a leader, so a quorum of them up).
    pub fn start(n: usize) -> Result<Self, EtcdError> {
        Self::start_at(None, Ipv4Addr::LOCALHOST, n)
    }

    /// As [`EtcdCluster::start`], every member inside the network namespace `netns`
    /// on `host` (one address, a port pair per member), reached by other namespaces
    /// (the cluster lab's gateways).
    pub fn start_on(netns: &str, host: Ipv4Addr, n: usize) -> Result<Self, EtcdError> {
        Self::start_at(Some(netns.to_owned()), host, n)
    }

    fn start_at(netns: Option<String>, host: Ipv4Addr, n: usize) -> Result<Self, EtcdError> {
        let bin = find_etcd().ok_or(EtcdError::NotInstalled)?;
        static N: AtomicU32 = AtomicU32::new(0);
        let c = N.fetch_add(1, Ordering::Relaxed);
        let token = format!("jvpn-{}-c{c}", std::process::id());
        let ports = match &netns {
            None => free_ports(host, 2 * n)?,
            Some(ns) => super::netns::run_in(ns, || free_ports(host, 2 * n))?,
        };
        let mut members = Vec::with_capacity(n);
        for i in 0..n {
            let dir = std::env::temp_dir().join(format!("{token}-{i}"));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).map_err(|cause| EtcdError::Io {
                what: format!("creating {}", dir.display()),
                cause,
            })?;
            members.push(Etcd {
                bin: bin.clone(),
                dir,
                name: format!("{token}-{i}"),
                client: ports[2 * i],
                peer: ports[2 * i + 1],
                child: None,
                log: Arc::default(),
                netns: netns.clone(),
                cluster: String::new(),
                token: token.clone(),
            });
        }
        let cluster = members
            .iter()
            .map(|m| format!("{}=http://{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut me = Self { members };
        let mut lines = Vec::with_capacity(n);
        for m in &mut me.members {
            m.cluster.clone_from(&cluster);
            lines.push(m.spawn()?);
        }
        for (m, lines) in me.members.iter_mut().zip(&lines) {
            m.wait_until_serving(lines)?;
        }
        Ok(me)
    }

    /// Every member's client URL, for `EtcdStore::connect`.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Etcd::endpoint).collect()
    }
}

/// Copies etcd's stderr into `log` (its last lines) on a thread of its own, so etcd
/// never blocks on a full pipe; the receiver gets one message per line and is
/// disconnected when etcd's stderr closes.
fn drain(stderr: ChildStderr, log: Arc<Mutex<VecDeque<String>>>) -> io::Result<mpsc::Receiver<()>> {
    let (tx, rx) = mpsc::channel();
    thread::Builder::new()
        .name("etcd-log".into())
        .spawn(move || {
            let mut r = BufReader::new(stderr);
            let mut buf = Vec::new();
            while r.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
                let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
                buf.clear();
                if let Ok(mut log) = log.lock() {
                    if log.len() == LOG_TAIL {
                        log.pop_front();
                    }
                    log.push_back(line);
                }
                // Nobody waits once etcd serves; keep draining all the same.
                let _ = tx.send(());
            }
        })?;
    Ok(rx)
}

fn tail(log: &Mutex<VecDeque<String>>) -> String {
    log.lock()
        .map(|l| l.iter().cloned().collect::<Vec<_>>().join("\n"))
        .unwrap_or_default()
}

/// `GET /health` answered `{"health":"true"}` before `deadline`: etcd serves client
/// requests and has a leader.
fn healthy(client: SocketAddr, deadline: Instant) -> bool {
    let ask = || -> io::Result<String> {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut s = TcpStream::connect_timeout(&client, left.max(Duration::from_millis(1)))?;
        let left = deadline.saturating_duration_since(Instant::now());
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
        s.set_write_timeout(Some(left.max(Duration::from_millis(1))))?;
        s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut answer = String::new();
        s.read_to_string(&mut answer)?;
        Ok(answer)
    };
    ask().is_ok_and(|a| a.contains(r#""health":"true""#))
}

/// The etcd of the test named `test`, or `None` after saying why it is skipped: etcd
/// is not installed, and this is not CI (`CI=true`), where a missing etcd is a
/// failure like any other. Panics when etcd does not start.
#[cfg(test)]
pub(crate) fn start_or_skip(test: &str) -> Option<Etcd> {
    or_skip(test, Etcd::start())
}

/// As [`start_or_skip`], for a cluster of `n` members.
#[cfg(test)]
pub(crate) fn cluster_or_skip(test: &str, n: usize) -> Option<EtcdCluster> {
    or_skip(test, EtcdCluster::start(n))
}

#[cfg(test)]
fn or_skip<T>(test: &str, started: Result<T, EtcdError>) -> Option<T> {
    match started {
        Ok(etcd) => Some(etcd),
        Err(EtcdError::NotInstalled) if std::env::var("CI").as_deref() != Ok("true") => {
            eprintln!(
                "SKIPPED {test}: etcd not installed (run cargo xtask test, which installs \
                 etcd-server)"
            );
            println!("SKIPPED: etcd not installed");
            None
        }
        Err(e) => panic!("{test}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alive(pid: u32) -> bool {
        // A reaped process is gone from /proc; a zombie would still be listed.
        Path::new(&format!("/proc/{pid}")).exists()
    }

    #[test]
    fn etcd_serves_and_drop_removes_it() {
        let Some(etcd) = start_or_skip("lab::etcd::tests::etcd_serves_and_drop_removes_it") else {
            return;
        };
        let pid = etcd.pid().expect("running");
        let dir = etcd.dir().to_owned();
        assert!(healthy(
            etcd.client,
            Instant::now() + Duration::from_secs(5)
        ));
        assert!(dir.join("data").is_dir());
        drop(etcd);
        assert!(!alive(pid));
        assert!(!dir.exists());
    }

    #[test]
    fn a_panicking_test_leaves_no_etcd_behind() {
        let mut seen = None;
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let name = "lab::etcd::tests::a_panicking_test_leaves_no_etcd_behind";
            let Some(etcd) = start_or_skip(name) else {
                return;
            };
            seen = Some((etcd.pid().expect("running"), etcd.dir().to_owned()));
            panic!("on purpose, with etcd running");
        }));
        match (seen, r) {
            (Some((pid, dir)), Err(_)) => {
                assert!(!alive(pid));
                assert!(!dir.exists());
            }
            (None, Ok(())) => {} // skipped
            (_, Err(failed)) => std::panic::resume_unwind(failed),
            (Some(_), Ok(())) => unreachable!("the closure panics once etcd runs"),
        }
    }

    #[test]
    fn kill_and_restart_keep_the_data_and_the_port() {
        let Some(mut etcd) =
            start_or_skip("lab::etcd::tests::kill_and_restart_keep_the_data_and_the_port")
        else {
            return;
        };
        let endpoint = etcd.endpoint();
        etcd.kill().unwrap();
        assert!(etcd.pid().is_none());
        assert!(!healthy(
            etcd.client,
            Instant::now() + Duration::from_millis(200)
        ));
        etcd.restart().unwrap();
        assert_eq!(etcd.endpoint(), endpoint);
        assert!(healthy(
            etcd.client,
            Instant::now() + Duration::from_secs(5)
        ));
    }
}
