//! The event bus and the event log (DESIGN §4: "event emission never blocks and never
//! changes state: a bounded queue, and a dropped-events counter when the sink is slow
//! or fails").
//!
//! [`EventBus::emit`] never blocks (beyond a short uncontended mutex) and never fails:
//! it appends to the recent-events ring (last [`RECENT_CAPACITY`]), broadcasts to the
//! followers of the control socket, and `try_send`s to the file sink's bounded queue;
//! a full queue counts a dropped event. The file sink runs on its own thread, so a
//! slow disk never reaches the gateway's tasks.

use std::{
    collections::VecDeque,
    fs::{File, OpenOptions, Permissions},
    io::{self, Write as _},
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    thread,
    time::{Duration, Instant},
};

use tokio::sync::{broadcast, mpsc};

use super::{ControlError, api::EventRecord};

/// Events kept for `jvpn-ctl events` and for the start of `events --follow`.
pub const RECENT_CAPACITY: usize = 1024;

/// Default capacity of the follower broadcast and of the file sink's queue.
pub const DEFAULT_CAPACITY: usize = 4096;

/// The gateway's event bus. Cheap to clone; all clones are the same bus.
#[derive(Clone)]
pub struct EventBus {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Mutex<Shared>,
    tx: broadcast::Sender<EventRecord>,
    capacity: usize,
    emitted: AtomicU64,
    dropped: AtomicU64,
}

struct Shared {
    recent: VecDeque<EventRecord>,
    sink: Option<mpsc::Sender<EventRecord>>,
}

impl EventBus {
    /// `capacity` (≥ 1) bounds both the events a follower may fall behind by and the
    /// file sink's queue.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        let (tx, _) = broadcast::channel(capacity);
        Self {
            inner: Arc::new(Inner {
                shared: Mutex::new(Shared {
                    recent: VecDeque::with_capacity(RECENT_CAPACITY),
                    sink: None,
                }),
                tx,
                capacity,
                emitted: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
            }),
        }
    }

    fn shared(&self) -> MutexGuard<'_, Shared> {
        self.inner
            .shared
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Publishes an event. Never blocks, never fails: a full or failed sink only
    /// counts a dropped event.
    pub fn emit(&self, rec: EventRecord) {
        self.inner.emitted.fetch_add(1, Relaxed);
        let mut shared = self.shared();
        if let Some(sink) = &shared.sink
            && sink.try_send(rec.clone()).is_err()
        {
            self.inner.dropped.fetch_add(1, Relaxed);
        }
        // No follower is not an error.
        let _ = self.inner.tx.send(rec.clone());
        if shared.recent.len() == RECENT_CAPACITY {
            shared.recent.pop_front();
        }
        shared.recent.push_back(rec);
    }

    /// A receiver of every event emitted from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<EventRecord> {
        self.inner.tx.subscribe()
    }

    /// The recent events and a receiver of every later one, with no gap and no
    /// duplicate between the two.
    pub fn subscribe_with_recent(&self) -> (Vec<EventRecord>, broadcast::Receiver<EventRecord>) {
        let shared = self.shared();
        (
            shared.recent.iter().cloned().collect(),
            self.inner.tx.subscribe(),
        )
    }

    /// The last [`RECENT_CAPACITY`] events, oldest first.
    pub fn recent(&self) -> Vec<EventRecord> {
        self.shared().recent.iter().cloned().collect()
    }

    /// Events emitted since the bus was created.
    pub fn emitted(&self) -> u64 {
        self.inner.emitted.load(Relaxed)
    }

    /// Events lost: file sink full or failing, followers that fell behind.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Relaxed)
    }

    /// Counts `n` more dropped events (the control server's lagging followers).
    pub fn note_dropped(&self, n: u64) {
        self.inner.dropped.fetch_add(n, Relaxed);
    }

    pub fn capacity(&self) -> usize {
        self.inner.capacity
    }

    /// Installs the sink queue; `None` if a sink is already attached.
    fn attach_sink(&self) -> Option<mpsc::Receiver<EventRecord>> {
        let mut shared = self.shared();
        if shared.sink.as_ref().is_some_and(|s| !s.is_closed()) {
            return None;
        }
        let (tx, rx) = mpsc::channel(self.inner.capacity);
        shared.sink = Some(tx);
        Some(rx)
    }

    fn detach_sink(&self) {
        self.shared().sink = None;
    }
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

/// The event log writer: one JSON line per event, appended to a file. Dropping it
/// detaches it from the bus (the thread writes what is queued, then ends);
/// [`FileSink::close`] also waits for that.
pub struct FileSink {
    bus: EventBus,
    thread: Option<thread::JoinHandle<()>>,
}

impl FileSink {
    /// Detaches the sink, writes the queued events and waits for the thread to end.
    /// Blocks (briefly); from async code call it via `spawn_blocking` or at exit.
    pub fn close(mut self) {
        self.bus.detach_sink();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for FileSink {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.bus.detach_sink();
        }
    }
}

/// Starts writing `bus`'s events to the event log at `path` (created with mode 0640
/// if missing, appended to otherwise).
///
/// The first open happens here, so a bad path is a startup error. Later failures
/// (disk full, file made unwritable, directory removed) count a dropped event per
/// event lost and log a rate-limited warning; the sink keeps going and reopens the
/// file on later events. The path is re-checked about once a second, so a log that
/// is rotated away (renamed or deleted) is recreated.
pub fn spawn_file_sink(path: impl Into<PathBuf>, bus: &EventBus) -> Result<FileSink, ControlError> {
    spawn_file_sink_with(path.into(), bus, Duration::from_secs(1))
}

fn spawn_file_sink_with(
    path: PathBuf,
    bus: &EventBus,
    recheck: Duration,
) -> Result<FileSink, ControlError> {
    let rx = bus.attach_sink().ok_or_else(|| {
        ControlError::Other("an event log is already attached to this event bus".into())
    })?;
    let file = open_log(&path).map_err(|e| {
        bus.detach_sink();
        ControlError::io(format!("cannot open event log {}", path.display()), e)
    })?;
    let mut writer = LogWriter {
        path,
        file: Some(file),
        checked: Instant::now(),
        recheck,
        resync: false,
        warned: None,
        suppressed: 0,
    };
    let sink_bus = bus.clone();
    let thread = thread::Builder::new()
        .name("jvpn-event-log".into())
        .spawn(move || writer.run(rx, &sink_bus))
        .map_err(|e| {
            bus.detach_sink();
            ControlError::io("cannot start the event log thread", e)
        })?;
    Ok(FileSink {
        bus: bus.clone(),
        thread: Some(thread),
    })
}

fn open_log(path: &Path) -> io::Result<File> {
    match OpenOptions::new()
        .append(true)
        .create_new(true)
        .mode(0o640)
        .open(path)
    {
        Ok(f) => {
            // Exactly 0640 whatever the umask.
            f.set_permissions(Permissions::from_mode(0o640))?;
            Ok(f)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            OpenOptions::new().append(true).open(path)
        }
        Err(e) => Err(e),
    }
}

/// `write_all` that also says how much was written before an error.
fn write_all_counted(file: &mut File, buf: &[u8]) -> (usize, io::Result<()>) {
    let mut done = 0;
    while done < buf.len() {
        match file.write(&buf[done..]) {
            Ok(0) => return (done, Err(io::ErrorKind::WriteZero.into())),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (done, Err(e)),
        }
    }
    (done, Ok(()))
}

const WARN_EVERY: Duration = Duration::from_secs(10);

struct LogWriter {
    path: PathBuf,
    file: Option<File>,
    checked: Instant,
    recheck: Duration,
    /// A line was cut short: start the next write on a new line.
    resync: bool,
    warned: Option<Instant>,
    suppressed: u64,
}

impl LogWriter {
    fn run(&mut self, mut rx: mpsc::Receiver<EventRecord>, bus: &EventBus) {
        // Ends when the bus detaches the sink (or is gone) and the queue is drained.
        while let Some(rec) = rx.blocking_recv() {
            let mut line = match serde_json::to_vec(&rec) {
                Ok(l) => l,
                Err(e) => {
                    bus.note_dropped(1);
                    self.warn(&io::Error::other(e));
                    continue;
                }
            };
            line.push(b'\n');
            if let Err(e) = self.write(&line) {
                bus.note_dropped(1);
                self.warn(&e);
            }
        }
    }

    fn write(&mut self, line: &[u8]) -> io::Result<()> {
        if self.file.is_some() && self.checked.elapsed() >= self.recheck {
            self.checked = Instant::now();
            if !self.still_current() {
                self.file = None;
            }
        }
        if self.file.is_none() {
            self.checked = Instant::now();
            self.file = Some(open_log(&self.path)?);
        }
        let Some(file) = &mut self.file else {
            unreachable!()
        };
        let prefix: &[u8] = if self.resync { b"\n" } else { b"" };
        let (written, result) = write_all_counted(file, &[prefix, line].concat());
        match result {
            Ok(()) => {
                self.resync = false;
                Ok(())
            }
            Err(e) => {
                // Reopen on the next event; finish a cut line first.
                if written >= prefix.len() {
                    self.resync = written > prefix.len();
                }
                self.file = None;
                Err(e)
            }
        }
    }

    /// The path still names the open file (not rotated away or deleted).
    fn still_current(&self) -> bool {
        let (Some(file), Ok(on_disk)) = (&self.file, std::fs::metadata(&self.path)) else {
            return false;
        };
        file.metadata()
            .is_ok_and(|open| open.dev() == on_disk.dev() && open.ino() == on_disk.ino())
    }

    fn warn(&mut self, e: &io::Error) {
        let now = Instant::now();
        if self
            .warned
            .is_some_and(|t| now.duration_since(t) < WARN_EVERY)
        {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(
            path = %self.path.display(),
            "event log write failed, event dropped: {e} ({} more failures since the last warning)",
            self.suppressed
        );
        self.warned = Some(now);
        self.suppressed = 0;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{
        control::api::SessionId,
        session::{Reason, State},
    };

    pub(crate) fn ev(n: u64) -> EventRecord {
        EventRecord::StateChange {
            ts_ms: n,
            session_id: SessionId(n + 1),
            from: State::Birth,
            to: State::Attached,
            reason: Reason::BirthComplete,
            detail: None,
            version: n,
        }
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "jvpn-events-{tag}-{}-{:?}",
            std::process::id(),
            thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn recent_ring_and_counters() {
        let bus = EventBus::new(8);
        for n in 0..(RECENT_CAPACITY as u64 + 10) {
            bus.emit(ev(n));
        }
        let recent = bus.recent();
        assert_eq!(recent.len(), RECENT_CAPACITY);
        assert_eq!(recent[0], ev(10));
        assert_eq!(recent.last(), Some(&ev(RECENT_CAPACITY as u64 + 9)));
        assert_eq!(bus.emitted(), RECENT_CAPACITY as u64 + 10);
        // No sink, no follower: nothing is dropped.
        assert_eq!(bus.dropped(), 0);
    }

    #[test]
    fn subscribe_sees_later_events() {
        let bus = EventBus::new(8);
        bus.emit(ev(1));
        let (recent, mut rx) = bus.subscribe_with_recent();
        assert_eq!(recent, vec![ev(1)]);
        bus.emit(ev(2));
        assert_eq!(rx.try_recv().unwrap(), ev(2));
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn stalled_sink_counts_drops_without_blocking() {
        let bus = EventBus::new(2);
        // A sink queue nobody reads: a stalled writer.
        let _rx = bus.attach_sink().unwrap();
        let t = Instant::now();
        for n in 0..10 {
            bus.emit(ev(n));
        }
        assert!(t.elapsed() < Duration::from_millis(100));
        assert_eq!(bus.emitted(), 10);
        assert_eq!(bus.dropped(), 8);
        // A second sink on the same bus is refused while the first is attached.
        assert!(bus.attach_sink().is_none());
    }

    #[test]
    fn file_sink_appends_json_lines() {
        let dir = temp_dir("append");
        let path = dir.join("events.log");
        let bus = EventBus::new(64);
        let sink = spawn_file_sink(&path, &bus).unwrap();
        assert!(spawn_file_sink(dir.join("other.log"), &bus).is_err());
        for n in 0..5 {
            bus.emit(ev(n));
        }
        sink.close();
        let mode = std::fs::metadata(&path).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o640);
        let text = std::fs::read_to_string(&path).unwrap();
        let got: Vec<EventRecord> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(got, (0..5).map(ev).collect::<Vec<_>>());
        assert_eq!(bus.dropped(), 0);
        // Appends to an existing log; the bus accepts a new sink once the old is closed.
        let sink = spawn_file_sink(&path, &bus).unwrap();
        bus.emit(ev(5));
        sink.close();
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 6);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn disk_full_counts_drops() {
        let bus = EventBus::new(64);
        let sink = spawn_file_sink("/dev/full", &bus).unwrap();
        let t = Instant::now();
        for n in 0..20 {
            bus.emit(ev(n));
        }
        assert!(t.elapsed() < Duration::from_millis(100));
        sink.close();
        assert_eq!(bus.emitted(), 20);
        assert_eq!(bus.dropped(), 20);
    }

    #[test]
    fn bad_path_is_a_startup_error() {
        let bus = EventBus::new(4);
        let e = spawn_file_sink("/nonexistent-jvpn-dir/events.log", &bus)
            .err()
            .unwrap();
        assert!(
            e.to_string()
                .starts_with("cannot open event log /nonexistent-jvpn-dir/events.log: "),
            "{e}"
        );
    }

    #[test]
    fn removed_directory_counts_drops_then_recovers() {
        let dir = temp_dir("rmdir");
        let path = dir.join("events.log");
        let bus = EventBus::new(64);
        let sink = spawn_file_sink_with(path.clone(), &bus, Duration::ZERO).unwrap();
        bus.emit(ev(0));
        wait_for(|| std::fs::read_to_string(&path).is_ok_and(|t| t.lines().count() == 1));
        std::fs::remove_dir_all(&dir).unwrap();
        for n in 1..4 {
            bus.emit(ev(n));
        }
        wait_for(|| bus.dropped() == 3);
        // The directory comes back: the sink reopens and carries on.
        std::fs::create_dir_all(&dir).unwrap();
        bus.emit(ev(4));
        sink.close();
        assert_eq!(bus.dropped(), 3);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            serde_json::from_str::<EventRecord>(text.trim()).unwrap(),
            ev(4)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn wait_for(mut f: impl FnMut() -> bool) {
        let t = Instant::now();
        while !f() {
            assert!(t.elapsed() < Duration::from_secs(5), "timed out");
            thread::sleep(Duration::from_millis(5));
        }
    }
}
