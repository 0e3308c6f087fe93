//! The gateway's control socket (see [`super::api`] for the protocol).
//!
//! Every request except `events` becomes a [`Call`] on the channel given to
//! [`serve`]; the gateway core answers it through the call's `reply`. `events`
//! requests are answered here from the [`EventBus`], so a follower never costs the
//! core anything: a follower that falls more than the bus capacity behind is sent a
//! final `lagged` error line and disconnected, its missed events counted as dropped.

use std::{
    fs::{DirBuilder, Permissions},
    io,
    os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncBufRead, AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream, unix::OwnedWriteHalf},
    sync::{Semaphore, broadcast::error::RecvError, mpsc, oneshot},
    task::{JoinHandle, JoinSet},
    time::timeout,
};

use super::{
    ControlError,
    api::{Request, Response},
    events::EventBus,
};

/// Longest request line accepted; a longer one gets an error and the connection closes.
pub const MAX_LINE: usize = 64 * 1024;
/// Concurrent control connections; more are refused with an error line.
pub const MAX_CONNECTIONS: usize = 256;
/// A client that does not take a response line within this is disconnected.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a request may wait for the gateway core.
const CORE_TIMEOUT: Duration = Duration::from_secs(10);

/// A request for the gateway core; answer it by sending a [`Response`] on `reply`
/// (if the client has gone away the send fails, which is fine to ignore).
#[derive(Debug)]
pub struct Call {
    pub request: Request,
    pub reply: oneshot::Sender<Response>,
}

/// The running control socket. Dropping it (or [`ControlServer::shutdown`]) stops
/// accepting, closes every connection and removes the socket file.
pub struct ControlServer {
    path: PathBuf,
    /// Device and inode of our socket file: only that file is removed at the end.
    ident: Option<(u64, u64)>,
    task: JoinHandle<()>,
}

impl ControlServer {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops the server and waits until its tasks have ended.
    pub async fn shutdown(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
        // Drop removes the socket file.
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.task.abort();
        if let (Some(ident), Ok(m)) = (self.ident, std::fs::symlink_metadata(&self.path))
            && (m.dev(), m.ino()) == ident
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Starts the control socket at `path`.
///
/// * The parent directory is created (mode 0755) if missing.
/// * An existing file at `path`: a socket something accepts on is an error ("another
///   gateway is listening on PATH"); a stale socket is removed; anything else is an
///   error and left alone.
/// * The socket has mode 0600 from the first moment it is reachable: it is bound in
///   a fresh 0700 directory next to `path`, chmod-ed, then renamed into place.
///   (Between the stale-socket check and the rename another gateway could start;
///   the rename would then take its place. Run one gateway per socket path.)
///
/// Must be called within a Tokio runtime.
pub async fn serve(
    path: &Path,
    calls: mpsc::Sender<Call>,
    bus: EventBus,
) -> Result<ControlServer, ControlError> {
    let path = path.to_path_buf();
    let listener = bind(&path)?;
    let ident = std::fs::symlink_metadata(&path)
        .ok()
        .map(|m| (m.dev(), m.ino()));
    let task = tokio::spawn(accept_loop(listener, calls, bus));
    Ok(ControlServer { path, ident, task })
}

fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    let shown = path.display();
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.exists() {
        DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(|e| ControlError::io(format!("cannot create {}", parent.display()), e))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => return Err(ControlError::AlreadyRunning(path.to_path_buf())),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                std::fs::remove_file(path).map_err(|e| {
                    ControlError::io(format!("cannot remove stale control socket {shown}"), e)
                })?;
            }
            Err(e) => {
                return Err(ControlError::io(
                    format!("cannot check the existing control socket {shown}"),
                    e,
                ));
            }
        },
        Ok(_) => return Err(ControlError::NotASocket(path.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(ControlError::io(format!("cannot inspect {shown}"), e)),
    }

    // Bind where nobody else can reach, fix the mode, then move into place.
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let tmp_dir = parent.join(format!(
        ".jvpn-sock.{}.{}",
        std::process::id(),
        SEQ.fetch_add(1, Relaxed)
    ));
    DirBuilder::new()
        .mode(0o700)
        .create(&tmp_dir)
        .map_err(|e| ControlError::io(format!("cannot create {}", tmp_dir.display()), e))?;
    let tmp_sock = tmp_dir.join("s");
    let result = (|| {
        let listener = std::os::unix::net::UnixListener::bind(&tmp_sock)
            .map_err(|e| ControlError::io(format!("cannot bind control socket {shown}"), e))?;
        std::fs::set_permissions(&tmp_sock, Permissions::from_mode(0o600))
            .map_err(|e| ControlError::io(format!("cannot chmod control socket {shown}"), e))?;
        std::fs::rename(&tmp_sock, path)
            .map_err(|e| ControlError::io(format!("cannot create control socket {shown}"), e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| ControlError::io(format!("control socket {shown}"), e))?;
        UnixListener::from_std(listener)
            .map_err(|e| ControlError::io(format!("control socket {shown}"), e))
    })();
    let _ = std::fs::remove_file(&tmp_sock);
    let _ = std::fs::remove_dir(&tmp_dir);
    result
}

async fn accept_loop(listener: UnixListener, calls: mpsc::Sender<Call>, bus: EventBus) {
    // Dropping the set (when this task is aborted) aborts every connection.
    let mut conns = JoinSet::new();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => match slots.clone().try_acquire_owned() {
                    Ok(slot) => {
                        let (calls, bus) = (calls.clone(), bus.clone());
                        conns.spawn(async move {
                            connection(stream, calls, bus).await;
                            drop(slot);
                        });
                    }
                    Err(_) => {
                        let line = Response::error("too many control connections").to_line() + "\n";
                        let _ = stream.try_write(line.as_bytes());
                    }
                },
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("control socket: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

enum Line {
    Complete,
    Eof,
    TooLong,
}

/// Reads one line (without its `\n`) into `buf`, refusing more than `max` bytes.
async fn read_line_limited<R: AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<Line> {
    buf.clear();
    loop {
        let chunk = r.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(if buf.is_empty() {
                Line::Eof
            } else {
                Line::Complete
            });
        }
        let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (chunk.len(), false),
        };
        if buf.len() + take > max {
            return Ok(Line::TooLong);
        }
        buf.extend_from_slice(&chunk[..take]);
        r.consume(if done { take + 1 } else { take });
        if done {
            return Ok(Line::Complete);
        }
    }
}

async fn send(wr: &mut OwnedWriteHalf, text: &str) -> io::Result<()> {
    let write = async {
        wr.write_all(text.as_bytes()).await?;
        wr.write_all(b"\n").await
    };
    match timeout(WRITE_TIMEOUT, write).await {
        Ok(r) => r,
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}

async fn connection(stream: UnixStream, calls: mpsc::Sender<Call>, bus: EventBus) {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let mut buf = Vec::new();
    loop {
        match read_line_limited(&mut rd, &mut buf, MAX_LINE).await {
            Ok(Line::Complete) => {}
            Ok(Line::Eof) | Err(_) => return,
            Ok(Line::TooLong) => {
                let msg = format!("request line too long (limit {MAX_LINE} bytes)");
                let _ = send(&mut wr, &Response::error(msg).to_line()).await;
                return;
            }
        }
        let request = match std::str::from_utf8(&buf) {
            Err(_) => Err("invalid request: not UTF-8".to_owned()),
            Ok(text) if text.trim().is_empty() => continue,
            Ok(text) => {
                serde_json::from_str::<Request>(text).map_err(|e| format!("invalid request: {e}"))
            }
        };
        let response = match request {
            Err(msg) => Response::error(msg),
            Ok(Request::Events { follow: false }) => Response::ok(&bus.recent()),
            Ok(Request::Events { follow: true }) => return follow(rd, wr, &bus).await,
            Ok(request) => ask_core(&calls, request).await,
        };
        if send(&mut wr, &response.to_line()).await.is_err() {
            return;
        }
    }
}

pub(crate) async fn ask_core(calls: &mpsc::Sender<Call>, request: Request) -> Response {
    let (reply, answer) = oneshot::channel();
    let asked = async {
        calls
            .send(Call { request, reply })
            .await
            .map_err(|_| "the gateway is shutting down")?;
        answer.await.map_err(|_| "the gateway dropped the request")
    };
    match timeout(CORE_TIMEOUT, asked).await {
        Ok(Ok(response)) => response,
        Ok(Err(msg)) => Response::error(msg),
        Err(_) => Response::error(format_args!(
            "the gateway did not answer within {} s",
            CORE_TIMEOUT.as_secs()
        )),
    }
}

/// `events --follow`: the recent ring, then every new event, one JSON line each,
/// until the client goes away, falls behind, or the bus is gone.
async fn follow(
    mut rd: BufReader<tokio::net::unix::OwnedReadHalf>,
    mut wr: OwnedWriteHalf,
    bus: &EventBus,
) {
    let (recent, mut rx) = bus.subscribe_with_recent();
    let mut text = String::new();
    for ev in &recent {
        if let Ok(line) = serde_json::to_string(ev) {
            text.push_str(&line);
            text.push('\n');
        }
    }
    if !text.is_empty() {
        text.pop();
        if send(&mut wr, &text).await.is_err() {
            return;
        }
    }
    let mut scratch = [0u8; 512];
    loop {
        tokio::select! {
            received = rx.recv() => match received {
                Ok(ev) => {
                    let Ok(line) = serde_json::to_string(&ev) else { continue };
                    if send(&mut wr, &line).await.is_err() {
                        // Stuck or gone: this event and the queued ones are lost to it.
                        bus.note_dropped(1 + rx.len() as u64);
                        return;
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    bus.note_dropped(n);
                    let msg = Response::error(format_args!("lagged: {n} events dropped"));
                    let _ = send(&mut wr, &msg.to_line()).await;
                    return;
                }
                Err(RecvError::Closed) => return,
            },
            // Input after the follow request is ignored; EOF means the client left.
            read = rd.read(&mut scratch) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use tokio::io::AsyncWriteExt as _;

    use super::*;
    use crate::{
        control::{
            api::{EventRecord, SessionId, SessionInfo},
            events::tests::ev,
        },
        session::State,
    };

    pub(crate) fn temp_dir(tag: &str) -> PathBuf {
        static N: AtomicU64 = AtomicU64::new(0);
        let d = std::env::temp_dir().join(format!(
            "jvpn-ctl-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    pub(crate) fn info(id: u64) -> SessionInfo {
        SessionInfo {
            id: SessionId(id),
            state: State::Attached,
            version: 1,
            peer: "ab".repeat(32),
            peer_name: Some("alice".into()),
            binding: Some("192.0.2.1:4000".into()),
            generation: 1,
            tunnel_addr: "10.77.0.2".into(),
            tunnel_addr6: None,
            age_s: 5,
            idle_ms: 10,
            switches: 0,
            up_packets: 1,
            up_bytes: 2,
            down_packets: 3,
            down_bytes: 4,
            stale_drops: 0,
            owner_node: None,
            owner_epoch: None,
        }
    }

    /// A gateway core that knows one session, 00000000000000a1.
    pub(crate) fn fake_core() -> mpsc::Sender<Call> {
        let (tx, mut rx) = mpsc::channel::<Call>(16);
        tokio::spawn(async move {
            while let Some(call) = rx.recv().await {
                let response = match call.request {
                    Request::Sessions => Response::ok(&vec![info(0xa1)]),
                    Request::Session { id } | Request::Kill { id } if id == SessionId(0xa1) => {
                        Response::ok(&info(0xa1))
                    }
                    Request::Session { id } | Request::Kill { id } => Response::no_session(id),
                    Request::Stats => Response::ok(&crate::control::api::Stats::default()),
                    Request::Policy => Response::ok(&crate::session::Policy::default()),
                    Request::Drain => Response::ok(&serde_json::json!({ "closed": 1 })),
                    Request::ClusterStatus => Response::error(crate::control::api::NOT_A_CLUSTER),
                    Request::Events { .. } => Response::error("events reached the core"),
                    Request::Status | Request::Move { .. } => Response::error("not a client"),
                    Request::Reload => Response::error("not reloadable"),
                };
                let _ = call.reply.send(response);
            }
        });
        tx
    }

    struct Conn {
        rd: BufReader<tokio::net::unix::OwnedReadHalf>,
        wr: OwnedWriteHalf,
    }

    impl Conn {
        async fn open(path: &Path) -> Conn {
            let (rd, wr) = UnixStream::connect(path).await.unwrap().into_split();
            Conn {
                rd: BufReader::new(rd),
                wr,
            }
        }

        async fn send(&mut self, line: &str) {
            self.wr.write_all(line.as_bytes()).await.unwrap();
            self.wr.write_all(b"\n").await.unwrap();
        }

        /// The next line, `None` at EOF.
        async fn line(&mut self) -> Option<String> {
            let mut s = String::new();
            let n = timeout(Duration::from_secs(5), self.rd.read_line(&mut s))
                .await
                .expect("no answer")
                .unwrap();
            (n > 0).then(|| s.trim_end().to_owned())
        }

        async fn ask(&mut self, line: &str) -> Response {
            self.send(line).await;
            serde_json::from_str(&self.line().await.unwrap()).unwrap()
        }
    }

    fn error_of(r: Response) -> String {
        match r {
            Response::Error { error } => error,
            Response::Ok { data } => panic!("expected an error, got {data}"),
        }
    }

    #[tokio::test]
    async fn requests_reach_the_core() {
        let dir = temp_dir("srv-req");
        let path = dir.join("run/jvpn/jvpn.sock");
        let server = serve(&path, fake_core(), EventBus::new(16)).await.unwrap();
        assert_eq!(server.path(), path);
        let mut c = Conn::open(&path).await;
        let Response::Ok { data } = c.ask(r#"{"cmd":"sessions"}"#).await else {
            panic!()
        };
        assert_eq!(
            serde_json::from_value::<Vec<SessionInfo>>(data).unwrap(),
            vec![info(0xa1)]
        );
        let r = c.ask(r#"{"cmd":"kill","id":"00000000000000ff"}"#).await;
        assert_eq!(error_of(r), "no session 00000000000000ff");
        // Blank lines are ignored; the connection carries on.
        c.send("").await;
        let r = c.ask(r#"{"cmd":"session","id":"00000000000000a1"}"#).await;
        assert!(matches!(r, Response::Ok { .. }));
        server.shutdown().await;
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn socket_and_directory_modes() {
        let dir = temp_dir("srv-mode");
        let path = dir.join("a/b/jvpn.sock");
        let server = serve(&path, fake_core(), EventBus::new(16)).await.unwrap();
        let m = std::fs::symlink_metadata(&path).unwrap();
        assert!(m.file_type().is_socket());
        assert_eq!(m.mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::metadata(dir.join("a/b")).unwrap().mode() & 0o777,
            0o755 & !current_umask()
        );
        // No temporary directory left behind.
        assert_eq!(std::fs::read_dir(dir.join("a/b")).unwrap().count(), 1);
        drop(server);
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn current_umask() -> u32 {
        // Read, not set: other tests create files concurrently.
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("Umask:")).unwrap();
        u32::from_str_radix(line["Umask:".len()..].trim(), 8).unwrap()
    }

    #[tokio::test]
    async fn stale_socket_is_replaced_live_one_refused() {
        let dir = temp_dir("srv-stale");
        let path = dir.join("jvpn.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let server = serve(&path, fake_core(), EventBus::new(16)).await.unwrap();
        let e = serve(&path, fake_core(), EventBus::new(16))
            .await
            .err()
            .unwrap();
        assert_eq!(
            e.to_string(),
            format!("another gateway is listening on {}", path.display())
        );
        // The refused attempt left the live socket alone.
        let mut c = Conn::open(&path).await;
        assert!(matches!(
            c.ask(r#"{"cmd":"stats"}"#).await,
            Response::Ok { .. }
        ));
        drop(server);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn not_a_socket_is_left_alone() {
        let dir = temp_dir("srv-file");
        let path = dir.join("jvpn.sock");
        std::fs::write(&path, "precious").unwrap();
        let e = serve(&path, fake_core(), EventBus::new(16))
            .await
            .err()
            .unwrap();
        assert_eq!(
            e.to_string(),
            format!(
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            )
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn malformed_requests() {
        let dir = temp_dir("srv-bad");
        let path = dir.join("jvpn.sock");
        let _server = serve(&path, fake_core(), EventBus::new(16)).await.unwrap();
        let mut c = Conn::open(&path).await;
        let e = error_of(c.ask("{not json").await);
        assert!(
            e.starts_with("invalid request: key must be a string"),
            "{e}"
        );
        let e = error_of(c.ask(r#"{"cmd":"reboot"}"#).await);
        assert!(e.contains("unknown variant `reboot`"), "{e}");
        let e = error_of(c.ask(r#"{"cmd":"session","id":"12"}"#).await);
        assert!(e.contains("exactly 16 hex digits"), "{e}");
        c.wr.write_all(b"\xff\xfe\n").await.unwrap();
        let e = error_of(serde_json::from_str(&c.line().await.unwrap()).unwrap());
        assert_eq!(e, "invalid request: not UTF-8");
        // Still usable after all that.
        assert!(matches!(
            c.ask(r#"{"cmd":"policy"}"#).await,
            Response::Ok { .. }
        ));
        // An over-long line: an error, then the server hangs up.
        let long = format!(r#"{{"cmd":"stats","pad":"{}"}}"#, "x".repeat(MAX_LINE));
        let e = error_of(c.ask(&long).await);
        assert_eq!(e, format!("request line too long (limit {MAX_LINE} bytes)"));
        assert_eq!(c.line().await, None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn core_gone() {
        let dir = temp_dir("srv-gone");
        let path = dir.join("jvpn.sock");
        let (calls, rx) = mpsc::channel(1);
        drop(rx);
        let _server = serve(&path, calls, EventBus::new(16)).await.unwrap();
        let mut c = Conn::open(&path).await;
        let e = error_of(c.ask(r#"{"cmd":"stats"}"#).await);
        assert_eq!(e, "the gateway is shutting down");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn recent_events() {
        let dir = temp_dir("srv-recent");
        let path = dir.join("jvpn.sock");
        let bus = EventBus::new(16);
        bus.emit(ev(1));
        bus.emit(ev(2));
        let _server = serve(&path, fake_core(), bus.clone()).await.unwrap();
        let mut c = Conn::open(&path).await;
        let Response::Ok { data } = c.ask(r#"{"cmd":"events"}"#).await else {
            panic!()
        };
        assert_eq!(
            serde_json::from_value::<Vec<EventRecord>>(data).unwrap(),
            vec![ev(1), ev(2)]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn follow_streams_new_events() {
        let dir = temp_dir("srv-follow");
        let path = dir.join("jvpn.sock");
        let bus = EventBus::new(16);
        bus.emit(ev(1));
        let _server = serve(&path, fake_core(), bus.clone()).await.unwrap();
        let mut c = Conn::open(&path).await;
        c.send(r#"{"cmd":"events","follow":true}"#).await;
        let read = |s: Option<String>| serde_json::from_str::<EventRecord>(&s.unwrap()).unwrap();
        // The recent ring first: once it arrives, the follower is subscribed.
        assert_eq!(read(c.line().await), ev(1));
        bus.emit(ev(2));
        bus.emit(ev(3));
        assert_eq!(read(c.line().await), ev(2));
        assert_eq!(read(c.line().await), ev(3));
        // Leaving: the server notices EOF and ends the connection, and with it the
        // follower's subscription.
        assert_eq!(bus.followers(), 1);
        drop(c);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while bus.followers() != 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the server did not notice the follower's EOF within 5 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(bus.dropped(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    // Current-thread runtime: the emits below run without the server getting a turn,
    // so the follower falls behind deterministically.
    #[tokio::test(flavor = "current_thread")]
    async fn lagging_follower_is_disconnected() {
        let dir = temp_dir("srv-lag");
        let path = dir.join("jvpn.sock");
        let bus = EventBus::new(4);
        bus.emit(ev(0));
        let _server = serve(&path, fake_core(), bus.clone()).await.unwrap();
        let mut c = Conn::open(&path).await;
        c.send(r#"{"cmd":"events","follow":true}"#).await;
        assert_eq!(
            serde_json::from_str::<EventRecord>(&c.line().await.unwrap()).unwrap(),
            ev(0)
        );
        let start = std::time::Instant::now();
        for n in 1..=100 {
            bus.emit(ev(n));
        }
        assert!(start.elapsed() < Duration::from_millis(100));
        let e = error_of(serde_json::from_str(&c.line().await.unwrap()).unwrap());
        assert_eq!(e, format!("lagged: {} events dropped", bus.dropped()));
        assert!(bus.dropped() >= 90, "{}", bus.dropped());
        assert_eq!(c.line().await, None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn many_clients() {
        let dir = temp_dir("srv-many");
        let path = dir.join("jvpn.sock");
        let _server = serve(&path, fake_core(), EventBus::new(16)).await.unwrap();
        let mut tasks = JoinSet::new();
        for _ in 0..32 {
            let path = path.clone();
            tasks.spawn(async move {
                let mut c = Conn::open(&path).await;
                for _ in 0..20 {
                    assert!(matches!(
                        c.ask(r#"{"cmd":"sessions"}"#).await,
                        Response::Ok { .. }
                    ));
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
