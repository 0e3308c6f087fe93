//! The event bus and the event log (DESIGN §4: "event emission never blocks and never
//! changes state: a bounded queue, and a dropped-events counter when the sink is slow
//! or fails").
//!
//! [`EventBus::emit`] never blocks (beyond a short uncontended mutex) and never fails:
//! it appends to the recent-events ring (last [`RECENT_CAPACITY`]), broadcasts to the
//! followers of the control socket, and `try_send`s to the file sink's bounded queue;
//! a full queue counts a dropped event. The file sink runs on its own thread, so a
//! slow disk never reaches the gateway's tasks.
//!
//! The file's growth is bounded ([`LogLimits`]): a byte-rate budget (lines over it are
//! left out, counted, and one `EVENTS_SUPPRESSED` line says so when writing resumes)
//! and a size limit (the file is renamed to `<file>.1` and a new one started). Both
//! apply to the file only: followers and the recent-events ring get every event.

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

use tokio::sync::{broadcast, mpsc, mpsc::error::TryRecvError};

use super::{
    ControlError,
    api::{EventRecord, unix_ms},
};

/// Events kept for `jvpn-ctl events` and for the start of `events --follow`.
pub const RECENT_CAPACITY: usize = 1024;

/// Default capacity of the follower broadcast and of the file sink's queue.
pub const DEFAULT_CAPACITY: usize = 4096;

/// Default byte rate of the event log (`event_log_rate_bytes`).
pub const DEFAULT_RATE_BYTES: u64 = 64 * 1024;
/// Default size at which the event log is rotated (`event_log_max_bytes`).
pub const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// Bounds on the event log's growth.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogLimits {
    /// Bytes per second, with a burst of one second's worth (a token bucket); lines
    /// over it are not written (counted, and summarised in one `EVENTS_SUPPRESSED`
    /// line when writing resumes).
    pub rate_bytes: u64,
    /// A line that would take the file past this renames it to `<file>.1` (replacing
    /// an older one) and starts a new file. Regular files only.
    pub max_bytes: u64,
}

impl Default for LogLimits {
    fn default() -> Self {
        Self {
            rate_bytes: DEFAULT_RATE_BYTES,
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

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
    /// Lines the file sink left out over its byte rate.
    rate_suppressed: AtomicU64,
    /// Rotations of the event log at its size limit.
    rotations: AtomicU64,
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
                rate_suppressed: AtomicU64::new(0),
                rotations: AtomicU64::new(0),
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

    /// Receivers subscribed now (the control socket's followers): one that has left
    /// is gone once the server has seen its EOF.
    pub fn followers(&self) -> usize {
        self.inner.tx.receiver_count()
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

    /// Lines the event log left out over its byte rate (`EVENTS_SUPPRESSED`).
    pub fn rate_suppressed(&self) -> u64 {
        self.inner.rate_suppressed.load(Relaxed)
    }

    /// Times the event log reached its size limit and was rotated.
    pub fn log_rotations(&self) -> u64 {
        self.inner.rotations.load(Relaxed)
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
/// if missing, appended to otherwise), within the default [`LogLimits`].
///
/// The first open happens here, so a bad path is a startup error. Later failures
/// (disk full, file made unwritable, directory removed) count a dropped event per
/// event lost and log a rate-limited warning; the sink keeps going and reopens the
/// file on later events. The path is re-checked about once a second, so a log that
/// is rotated away (renamed or deleted) is recreated.
pub fn spawn_file_sink(path: impl Into<PathBuf>, bus: &EventBus) -> Result<FileSink, ControlError> {
    spawn_file_sink_limited(path, bus, LogLimits::default())
}

/// [`spawn_file_sink`] within `limits` (the gateway's `event_log_rate_bytes` and
/// `event_log_max_bytes`).
pub fn spawn_file_sink_limited(
    path: impl Into<PathBuf>,
    bus: &EventBus,
    limits: LogLimits,
) -> Result<FileSink, ControlError> {
    spawn_file_sink_with(path.into(), bus, Duration::from_secs(1), limits)
}

fn spawn_file_sink_with(
    path: PathBuf,
    bus: &EventBus,
    recheck: Duration,
    limits: LogLimits,
) -> Result<FileSink, ControlError> {
    let rx = bus.attach_sink().ok_or_else(|| {
        ControlError::Other("an event log is already attached to this event bus".into())
    })?;
    let file = open_log(&path).map_err(|e| {
        bus.detach_sink();
        ControlError::io(format!("cannot open event log {}", path.display()), e)
    })?;
    let size = file.metadata().map_or(0, |m| m.len());
    let regular = file.metadata().is_ok_and(|m| m.file_type().is_file());
    let mut writer = LogWriter {
        path,
        file: Some(file),
        checked: Instant::now(),
        recheck,
        resync: false,
        warned: None,
        suppressed: 0,
        size,
        regular,
        max_bytes: limits.max_bytes,
        budget: ByteBudget::new(limits.rate_bytes, 0),
        started: Instant::now(),
        left_out: None,
        bus: bus.clone(),
    };
    let thread = thread::Builder::new()
        .name("jvpn-event-log".into())
        .spawn(move || writer.run(rx))
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
/// While an `EVENTS_SUPPRESSED` line waits for the budget and no event comes, how
/// often the writer looks again (short: events arriving meanwhile wait in the
/// bounded queue).
const NOTICE_POLL: Duration = Duration::from_millis(10);

/// A token bucket of bytes: `rate` per second, holding at most one second's worth
/// (the burst). Pure: time comes in as milliseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ByteBudget {
    rate: u64,
    /// What is left, in thousandths of a byte (a millisecond's refill is exact).
    milli: u64,
    at_ms: u64,
}

impl ByteBudget {
    /// Full at `now_ms`.
    fn new(rate: u64, now_ms: u64) -> Self {
        let rate = rate.max(1);
        Self {
            rate,
            milli: rate.saturating_mul(1000),
            at_ms: now_ms,
        }
    }

    fn burst(&self) -> u64 {
        self.rate
    }

    /// Whole bytes available at `now_ms`.
    fn available(&mut self, now_ms: u64) -> u64 {
        let dt = now_ms.saturating_sub(self.at_ms);
        self.at_ms = self.at_ms.max(now_ms);
        self.milli = self
            .milli
            .saturating_add(dt.saturating_mul(self.rate))
            .min(self.rate.saturating_mul(1000));
        self.milli / 1000
    }

    /// Takes `n` bytes if they are there.
    fn take(&mut self, n: u64, now_ms: u64) -> bool {
        if self.available(now_ms) < n {
            return false;
        }
        self.milli -= n * 1000;
        true
    }
}

/// Lines left out since the last line written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct LeftOut {
    count: u64,
    bytes: u64,
}

impl LeftOut {
    /// The `EVENTS_SUPPRESSED` line that tells of them.
    fn line(self) -> Vec<u8> {
        let rec = EventRecord::EventsSuppressed {
            ts_ms: unix_ms(),
            count: self.count,
            bytes: self.bytes,
        };
        let mut l = serde_json::to_vec(&rec).expect("an event always serializes");
        l.push(b'\n');
        l
    }
}

struct LogWriter {
    path: PathBuf,
    file: Option<File>,
    checked: Instant,
    recheck: Duration,
    /// A line was cut short: start the next write on a new line.
    resync: bool,
    warned: Option<Instant>,
    suppressed: u64,
    /// Bytes in the open file.
    size: u64,
    /// The open file is a regular file (only those are rotated).
    regular: bool,
    max_bytes: u64,
    budget: ByteBudget,
    /// The budget's clock.
    started: Instant,
    left_out: Option<LeftOut>,
    bus: EventBus,
}

impl LogWriter {
    fn run(&mut self, mut rx: mpsc::Receiver<EventRecord>) {
        // Ends when the bus detaches the sink (or is gone) and the queue is drained.
        loop {
            let rec = if self.left_out.is_some() {
                // Something was left out: say so as soon as the budget allows, even
                // if no event comes.
                match rx.try_recv() {
                    Ok(rec) => rec,
                    Err(TryRecvError::Empty) => {
                        if !self.write_notice(false) {
                            thread::sleep(NOTICE_POLL);
                        }
                        continue;
                    }
                    Err(TryRecvError::Disconnected) => break,
                }
            } else {
                match rx.blocking_recv() {
                    Some(rec) => rec,
                    None => break,
                }
            };
            self.handle(&rec);
        }
        // Closing: what was left out is told, over the budget if need be.
        self.write_notice(true);
    }

    fn handle(&mut self, rec: &EventRecord) {
        let mut line = match serde_json::to_vec(rec) {
            Ok(l) => l,
            Err(e) => {
                self.bus.note_dropped(1);
                self.warn(&io::Error::other(e));
                return;
            }
        };
        line.push(b'\n');
        let notice = self.left_out.map(LeftOut::line);
        let need = line.len() + notice.as_ref().map_or(0, Vec::len);
        if !self.admit(need as u64) {
            let l = self.left_out.get_or_insert_default();
            l.count += 1;
            l.bytes += line.len() as u64;
            self.bus.inner.rate_suppressed.fetch_add(1, Relaxed);
            return;
        }
        if let Some(n) = notice {
            match self.write(&n) {
                Ok(()) => self.left_out = None,
                Err(e) => self.warn(&e),
            }
        }
        if let Err(e) = self.write(&line) {
            self.bus.note_dropped(1);
            self.warn(&e);
        }
    }

    /// Takes `need` bytes from the budget. After a cut, writing resumes only once a
    /// quarter of the burst is back, so that a steady flood gets a few
    /// `EVENTS_SUPPRESSED` lines a second, not one between every two lines.
    fn admit(&mut self, need: u64) -> bool {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        if self.left_out.is_some() && self.budget.available(now) < self.budget.burst() / 4 {
            return false;
        }
        self.budget.take(need, now)
    }

    /// Writes the pending `EVENTS_SUPPRESSED` line if the budget allows (always with
    /// `force`); true when none is pending any more.
    fn write_notice(&mut self, force: bool) -> bool {
        let Some(l) = self.left_out else {
            return true;
        };
        let n = l.line();
        if !force && !self.admit(n.len() as u64) {
            return false;
        }
        match self.write(&n) {
            Ok(()) => {
                self.left_out = None;
                true
            }
            Err(e) => {
                self.warn(&e);
                false
            }
        }
    }

    fn open(&mut self) -> io::Result<()> {
        self.checked = Instant::now();
        let file = open_log(&self.path)?;
        let meta = file.metadata()?;
        self.size = meta.len();
        self.regular = meta.file_type().is_file();
        self.file = Some(file);
        Ok(())
    }

    fn write(&mut self, line: &[u8]) -> io::Result<()> {
        if self.file.is_some() && self.checked.elapsed() >= self.recheck {
            self.checked = Instant::now();
            if !self.still_current() {
                self.file = None;
            }
        }
        if self.file.is_none() {
            self.open()?;
        }
        let len = (usize::from(self.resync) + line.len()) as u64;
        if self.regular && self.size > 0 && self.size.saturating_add(len) > self.max_bytes {
            self.rotate()?;
        }
        let prefix: &[u8] = if self.resync { b"\n" } else { b"" };
        let Some(file) = &mut self.file else {
            unreachable!()
        };
        let (written, result) = write_all_counted(file, &[prefix, line].concat());
        self.size += written as u64;
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

    /// The file reached its size limit: renamed to `<file>.1` (replacing an older
    /// one), and a new file started.
    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        let old = rotated(&self.path);
        match std::fs::rename(&self.path, &old) {
            Ok(()) => {}
            // Gone meanwhile (rotated by someone else): a new file all the same.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("rotating to {}: {e}", old.display()),
                ));
            }
        }
        // A cut line stays in the old file.
        self.resync = false;
        self.open()?;
        self.bus.inner.rotations.fetch_add(1, Relaxed);
        tracing::info!(
            path = %self.path.display(),
            "event log reached {} bytes: renamed to {}, a new file started",
            self.max_bytes,
            old.display()
        );
        Ok(())
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

/// `<file>.1`, where a rotated event log goes.
pub fn rotated(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".1");
    PathBuf::from(s)
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
        let sink =
            spawn_file_sink_with(path.clone(), &bus, Duration::ZERO, LogLimits::default()).unwrap();
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

    #[test]
    fn byte_budget_refills_at_its_rate_up_to_one_second() {
        let mut b = ByteBudget::new(1000, 0);
        assert!(b.take(1000, 0));
        assert!(!b.take(1, 0));
        assert_eq!(b.available(1), 1);
        assert_eq!(b.available(500), 500);
        assert!(!b.take(501, 500));
        assert!(b.take(500, 500));
        // At most the burst, however long it was idle.
        assert_eq!(b.available(60_000), 1000);
        // Exact: 65,536 bytes/s is 65.536 bytes/ms, nothing lost to rounding.
        let mut b = ByteBudget::new(65_536, 0);
        assert!(b.take(65_536, 0));
        let got: u64 = (1..=1000)
            .map(|ms| {
                let n = b.available(ms);
                assert!(b.take(n, ms));
                n
            })
            .sum();
        assert_eq!(got, 65_536);
    }

    fn lines(path: &Path) -> Vec<EventRecord> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
            .collect()
    }

    fn line_len(rec: &EventRecord) -> u64 {
        serde_json::to_vec(rec).unwrap().len() as u64 + 1
    }

    #[test]
    fn the_rate_cap_bounds_the_file_and_says_what_was_left_out() {
        let dir = temp_dir("rate");
        let path = dir.join("events.log");
        let rate = 16 * 1024;
        // A queue that holds the whole flood: every event is written or left out
        // over the rate, none dropped.
        let bus = EventBus::new(1 << 15);
        let limits = LogLimits {
            rate_bytes: rate,
            max_bytes: DEFAULT_MAX_BYTES,
        };
        let t = Instant::now();
        let sink = spawn_file_sink_limited(&path, &bus, limits).unwrap();
        let n = 20_000;
        let flood: Vec<EventRecord> = (0..n).map(ev).collect();
        let offered: u64 = flood.iter().map(line_len).sum();
        for e in &flood {
            bus.emit(e.clone());
        }
        // The writer has seen the whole flood (each event written or left out) ...
        let written_now = || {
            lines(&path)
                .iter()
                .filter(|e| !matches!(e, EventRecord::EventsSuppressed { .. }))
                .count() as u64
        };
        wait_for(|| written_now() + bus.rate_suppressed() == n);
        // ... and, with no event coming, says what it left out once the budget is
        // back; the next event is written after that line.
        wait_for(|| {
            matches!(
                lines(&path).last(),
                Some(EventRecord::EventsSuppressed { .. })
            )
        });
        bus.emit(ev(n));
        sink.close();
        let elapsed = t.elapsed().as_secs_f64();
        assert_eq!(bus.dropped(), 0);

        let size = std::fs::metadata(&path).unwrap().len();
        let bound = (rate as f64 * (1.0 + elapsed)) as u64;
        assert!(size <= bound, "{size} bytes in {elapsed:.2}s, rate {rate}");
        assert!(offered > 10 * bound, "far more than the cap was offered");
        let got = lines(&path);
        let (mut written, mut written_bytes, mut left, mut left_bytes) = (0, 0, 0, 0);
        let mut last_notice = None;
        for (i, e) in got.iter().enumerate() {
            match e {
                EventRecord::EventsSuppressed { count, bytes, .. } => {
                    left += count;
                    left_bytes += bytes;
                    last_notice = Some(i);
                }
                e => {
                    written += 1;
                    written_bytes += line_len(e);
                }
            }
        }
        // Every event is in the file or in a suppression line, to the byte.
        assert_eq!(written + left, n + 1);
        assert_eq!(written_bytes + left_bytes, offered + line_len(&ev(n)));
        assert_eq!(bus.rate_suppressed(), left);
        assert!(left > n / 2, "{left} left out");
        // The suppression line comes before the event written after the pause.
        assert_eq!(got.last(), Some(&ev(n)));
        assert!(last_notice.is_some_and(|i| i < got.len() - 1), "{got:?}");
        eprintln!(
            "{n} events ({offered} bytes) in {elapsed:.2}s at {rate} bytes/s: \
             {written} written ({size} bytes), {left} left out ({left_bytes} bytes)"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_log_is_rotated_at_its_size_limit() {
        let dir = temp_dir("rotate");
        let path = dir.join("events.log");
        std::fs::write(rotated(&path), "an older rotation\n").unwrap();
        let bus = EventBus::new(1 << 12);
        let max = 16 * 1024;
        let limits = LogLimits {
            rate_bytes: 1 << 30,
            max_bytes: max,
        };
        let sink = spawn_file_sink_limited(&path, &bus, limits).unwrap();
        let n = 1_000;
        let mut expect_rotations = 0;
        let mut size = 0;
        for i in 0..n {
            let len = line_len(&ev(i));
            if size > 0 && size + len > max {
                expect_rotations += 1;
                size = 0;
            }
            size += len;
            bus.emit(ev(i));
        }
        sink.close();
        assert_eq!(bus.dropped(), 0);
        assert_eq!(bus.rate_suppressed(), 0);
        assert!(expect_rotations >= 5);
        assert_eq!(bus.log_rotations(), expect_rotations);
        let (cur, old) = (lines(&path), lines(&rotated(&path)));
        assert!(std::fs::metadata(&path).unwrap().len() <= max);
        assert!(std::fs::metadata(rotated(&path)).unwrap().len() <= max);
        // The last two files, whole lines, in order, ending with the last event.
        let both: Vec<EventRecord> = old.into_iter().chain(cur).collect();
        let first = n - both.len() as u64;
        assert_eq!(both, (first..n).map(ev).collect::<Vec<_>>());
        // The new file has the old one's mode.
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o640);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_regular_files_are_rotated() {
        let bus = EventBus::new(64);
        let limits = LogLimits {
            rate_bytes: 1 << 30,
            max_bytes: 1024,
        };
        let sink = spawn_file_sink_limited("/dev/null", &bus, limits).unwrap();
        for n in 0..50 {
            bus.emit(ev(n));
        }
        sink.close();
        assert_eq!((bus.log_rotations(), bus.dropped()), (0, 0));
        assert!(Path::new("/dev/null").exists() && !Path::new("/dev/null.1").exists());
    }

    fn wait_for(mut f: impl FnMut() -> bool) {
        let t = Instant::now();
        while !f() {
            assert!(t.elapsed() < Duration::from_secs(5), "timed out");
            thread::sleep(Duration::from_millis(5));
        }
    }
}
