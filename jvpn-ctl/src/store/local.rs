//! The durable [`SessionStore`] of a single gateway: one redb file,
//! `sessions.redb`, in `state_dir`.
//!
//! Tables: `sessions` maps a session id to (revision, sealed record); `meta` holds
//! `format_version` (the layout of these tables; this implementation writes and
//! reads only [`FORMAT_VERSION`]) and `revision`, the store-wide counter, written in
//! the same transaction as the records so the two cannot disagree after a crash.

use std::{
    ffi::CString,
    fs::{File, OpenOptions},
    io,
    os::unix::{ffi::OsStrExt, fs::OpenOptionsExt},
    path::{Path, PathBuf},
};

use redb::{
    Builder, Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition, TableHandle, backends::FileBackend,
};

use super::{Revision, SessionStore, StoreError, Write, check_batch};

pub const FILE_NAME: &str = "sessions.redb";
pub const FORMAT_VERSION: u64 = 1;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const SESSIONS: TableDefinition<u64, (u64, &[u8])> = TableDefinition::new("sessions");
const K_FORMAT: &str = "format_version";
const K_REVISION: &str = "revision";

/// The page cache redb may use. Its default (1 GiB) is sized for databases far
/// larger than a gateway's sessions, which are read once at start.
const CACHE_BYTES: usize = 64 << 20;

pub struct LocalStore {
    /// `None` after a failed write closed it (redb fails every later operation
    /// after an I/O error until the file is opened again: [`SessionStore::recover`]).
    db: Option<Database>,
    dir: PathBuf,
    path: PathBuf,
}

impl std::fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl LocalStore {
    /// Opens `dir/sessions.redb`, creating it (mode 0600) if absent. Refuses a file
    /// another process has open ([`StoreError::Locked`]), one that is not a redb
    /// file or not ours, a corrupt or truncated one, and one of another
    /// `format_version`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        check_dir(dir)?;
        let path = dir.join(FILE_NAME);
        let (db, created) = open_db(dir, &path)?;
        let store = Self {
            db: Some(db),
            dir: dir.to_owned(),
            path,
        };
        store.init_or_check()?;
        if created {
            // redb fsyncs the file's contents; the directory entry that makes the
            // file findable after a power cut is ours to make durable, before the
            // first commit is acknowledged.
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| StoreError::Io {
                    what: format!("syncing state directory {}", dir.display()),
                    cause: e,
                })?;
        }
        Ok(store)
    }

    fn db(&self) -> Result<&Database, StoreError> {
        self.db.as_ref().ok_or_else(|| StoreError::Io {
            what: format!(
                "{} was closed after a failed write and could not be opened again",
                self.path.display()
            ),
            cause: io::Error::other("store closed"),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A `map_err` adapter for redb's many error types, naming this store's file.
    fn err<E: Into<redb::Error>>(&self, what: &'static str) -> impl FnOnce(E) -> StoreError + '_ {
        move |e| redb_err(&self.path, what, e)
    }

    /// A file with no tables is new (just created, or created by a run that died
    /// before this point): give it our tables. Otherwise it must be ours, of our
    /// format_version, and consistent.
    fn init_or_check(&self) -> Result<(), StoreError> {
        let rtx = self.db()?.begin_read().map_err(self.err("reading"))?;
        let tables: Vec<String> = rtx
            .list_tables()
            .map_err(self.err("listing tables"))?
            .map(|t| t.name().to_owned())
            .collect();
        if tables.is_empty() {
            drop(rtx);
            let mut tx = self.db()?.begin_write().map_err(self.err("initializing"))?;
            tx.set_durability(Durability::Immediate)
                .map_err(self.err("initializing"))?;
            {
                let mut meta = tx.open_table(META).map_err(self.err("initializing"))?;
                meta.insert(K_FORMAT, FORMAT_VERSION)
                    .map_err(self.err("initializing"))?;
                meta.insert(K_REVISION, 0)
                    .map_err(self.err("initializing"))?;
                tx.open_table(SESSIONS).map_err(self.err("initializing"))?;
            }
            return tx.commit().map_err(self.err("initializing"));
        }
        let not_ours = |detail: &str| StoreError::NotAStore {
            path: self.path.clone(),
            detail: detail.to_owned(),
        };
        if !tables.iter().any(|t| t == "meta") {
            return Err(not_ours("a redb file without a meta table"));
        }
        let meta = rtx
            .open_table(META)
            .map_err(self.err("opening table meta"))?;
        let version = meta.get(K_FORMAT).map_err(self.err("reading meta"))?;
        let Some(version) = version.map(|g| g.value()) else {
            return Err(not_ours("a redb file without format_version"));
        };
        if version != FORMAT_VERSION {
            return Err(StoreError::FormatVersion {
                path: self.path.clone(),
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let corrupt = |detail: String| StoreError::Corrupt {
            path: self.path.clone(),
            detail,
        };
        let counter = meta
            .get(K_REVISION)
            .map_err(self.err("reading meta"))?
            .map(|g| g.value())
            .ok_or_else(|| corrupt("meta has no revision".into()))?;
        let sessions = rtx
            .open_table(SESSIONS)
            .map_err(self.err("opening table sessions"))?;
        // Revisions only grow if the counter is at least every record's
        // revision; a file where that is not so would hand out old revisions again.
        for entry in sessions.iter().map_err(self.err("reading sessions"))? {
            let (k, v) = entry.map_err(self.err("reading sessions"))?;
            let rev = v.value().0;
            if rev == 0 || rev > counter {
                return Err(corrupt(format!(
                    "session {:#018x} has revision {rev}, the store's counter is {counter}",
                    k.value()
                )));
            }
        }
        Ok(())
    }
}

impl SessionStore for LocalStore {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn list(&self) -> Result<Vec<(u64, Revision, Vec<u8>)>, StoreError> {
        const W: &str = "listing sessions";
        let rtx = self.db()?.begin_read().map_err(self.err(W))?;
        let t = rtx.open_table(SESSIONS).map_err(self.err(W))?;
        let mut out =
            Vec::with_capacity(usize::try_from(t.len().map_err(self.err(W))?).unwrap_or(0));
        for entry in t.iter().map_err(self.err(W))? {
            let (k, v) = entry.map_err(self.err(W))?;
            let (rev, bytes) = v.value();
            out.push((k.value(), rev, bytes.to_vec()));
        }
        Ok(out)
    }

    fn get(&self, id: u64) -> Result<Option<(Revision, Vec<u8>)>, StoreError> {
        const W: &str = "reading a session";
        let rtx = self.db()?.begin_read().map_err(self.err(W))?;
        let t = rtx.open_table(SESSIONS).map_err(self.err(W))?;
        let got = t.get(id).map_err(self.err(W))?;
        Ok(got.map(|g| {
            let (rev, bytes) = g.value();
            (rev, bytes.to_vec())
        }))
    }

    fn apply(&mut self, batch: &[Write]) -> Result<Vec<Revision>, StoreError> {
        let r = self.write(batch);
        if matches!(r, Err(StoreError::Db { .. } | StoreError::Io { .. })) {
            // redb refuses everything after an I/O error (`PreviousIo`) until the
            // file is opened again; closing it now lets `recover` do that.
            self.db = None;
        }
        r
    }

    fn recover(&mut self) -> Result<(), StoreError> {
        if self.db.is_some() {
            return Ok(());
        }
        check_dir(&self.dir)?;
        let (db, _) = open_db(&self.dir, &self.path)?;
        self.db = Some(db);
        self.init_or_check()
    }
}

impl LocalStore {
    fn write(&mut self, batch: &[Write]) -> Result<Vec<Revision>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        const W: &str = "writing sessions";
        let mut tx = self.db()?.begin_write().map_err(self.err(W))?;
        // The default, but the contract depends on it: Ok means fsync'd.
        tx.set_durability(Durability::Immediate)
            .map_err(self.err(W))?;
        let out = {
            let mut meta = tx.open_table(META).map_err(self.err(W))?;
            let mut sessions = tx.open_table(SESSIONS).map_err(self.err(W))?;
            check_batch(batch, |id| {
                Ok(sessions
                    .get(id)
                    .map_err(self.err(W))?
                    .map_or(0, |g| g.value().0))
            })?;
            let counter = meta
                .get(K_REVISION)
                .map_err(self.err(W))?
                .map(|g| g.value())
                .unwrap_or(0);
            let rev = counter.checked_add(1).ok_or_else(|| StoreError::Corrupt {
                path: self.path.clone(),
                detail: "the revision counter is exhausted".into(),
            })?;
            let mut out = Vec::with_capacity(batch.len());
            for w in batch {
                match w {
                    Write::Put { id, value, .. } => {
                        sessions
                            .insert(id, (rev, value.as_slice()))
                            .map_err(self.err(W))?;
                        out.push(rev);
                    }
                    Write::Delete { id, .. } => {
                        sessions.remove(id).map_err(self.err(W))?;
                        out.push(0);
                    }
                }
            }
            meta.insert(K_REVISION, rev).map_err(self.err(W))?;
            out
        };
        // On any error above, dropping `tx` aborts it: nothing of the batch is kept.
        tx.commit().map_err(self.err(W))?;
        Ok(out)
    }
}

/// The database in `path`, checked for integrity (a plain open trusts the file and may
/// panic on one altered outside redb; the check reads the committed pages, a
/// gateway's sessions are a few MB, and reports damage as an error the operator can
/// act on); `true` when the file was created.
fn open_db(dir: &Path, path: &Path) -> Result<(Database, bool), StoreError> {
    let (file, created) = open_file(dir, path)?;
    let backend = FileBackend::new(file).map_err(|e| redb_err(path, "opening", e))?;
    let db = Builder::new()
        .set_cache_size(CACHE_BYTES)
        .set_check_integrity_on_open(true)
        .create_with_backend(backend)
        .map_err(|e| redb_err(path, "opening", e))?;
    Ok((db, created))
}

/// Opens the store's file, creating it (0600: records are sealed, but ids and
/// revisions are nobody else's business) if absent; `true` when created.
fn open_file(dir: &Path, path: &Path) -> Result<(File, bool), StoreError> {
    let open = |create: bool| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(create)
            .mode(0o600)
            .open(path)
    };
    let r = match open(true) {
        Ok(f) => Ok((f, true)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => open(false).map(|f| (f, false)),
        Err(e) => Err(e),
    };
    r.map_err(|e| match e.kind() {
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
            StoreError::NotWritable {
                dir: dir.to_owned(),
                cause: e,
            }
        }
        _ => StoreError::Io {
            what: format!("opening {}", path.display()),
            cause: e,
        },
    })
}

/// The state directory must exist, be a directory, and be writable by this
/// process (checked for the effective user, which is what creating files uses),
/// so a misconfigured deployment is told which of the three it got wrong.
fn check_dir(dir: &Path) -> Result<(), StoreError> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(StoreError::NotADirectory(dir.to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(StoreError::NoStateDir(dir.to_owned()));
        }
        Err(e) if e.kind() == io::ErrorKind::NotADirectory => {
            return Err(StoreError::NotADirectory(dir.to_owned()));
        }
        Err(e) => {
            return Err(StoreError::Io {
                what: format!("state directory {}", dir.display()),
                cause: e,
            });
        }
    }
    let c = CString::new(dir.as_os_str().as_bytes()).map_err(|_| StoreError::Io {
        what: format!("state directory {}", dir.display()),
        cause: io::Error::from(io::ErrorKind::InvalidInput),
    })?;
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    let r = unsafe {
        libc::faccessat(
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::W_OK | libc::X_OK,
            libc::AT_EACCESS,
        )
    };
    if r != 0 {
        return Err(StoreError::NotWritable {
            dir: dir.to_owned(),
            cause: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Maps a redb error to the variant an operator can act on: locked, not ours,
/// corrupt; anything else keeps redb's error.
fn redb_err(path: &Path, what: &'static str, err: impl Into<redb::Error>) -> StoreError {
    let path = path.to_owned();
    match err.into() {
        redb::Error::DatabaseAlreadyOpen | redb::Error::LockProtocolMismatch => {
            StoreError::Locked { path }
        }
        redb::Error::Corrupted(detail) => StoreError::Corrupt { path, detail },
        // redb reports a file without its header as InvalidData ("not a database").
        redb::Error::Io(e) if e.kind() == io::ErrorKind::InvalidData => StoreError::NotAStore {
            path,
            detail: format!("not a redb file: {e}"),
        },
        // A file cut short before its header ends.
        redb::Error::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => StoreError::Corrupt {
            path,
            detail: format!("truncated: {e}"),
        },
        redb::Error::UpgradeRequired(v) => StoreError::NotAStore {
            path,
            detail: format!("a redb file of an older file format ({v})"),
        },
        e @ (redb::Error::TableTypeMismatch { .. }
        | redb::Error::TableIsMultimap(_)
        | redb::Error::TypeDefinitionChanged { .. }
        | redb::Error::TableDoesNotExist(_)) => StoreError::NotAStore {
            path,
            detail: e.to_string(),
        },
        cause => StoreError::Db {
            path,
            what,
            cause: Box::new(cause),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{BufRead, BufReader},
        os::unix::fs::PermissionsExt,
        process::{Command, Stdio},
        time::Duration,
    };

    use super::super::contract::{TestDir, commit_latency, contract, put, sorted};
    use super::*;

    fn names_file(e: &StoreError, dir: &Path) {
        let want = dir.join(FILE_NAME).display().to_string();
        assert!(e.to_string().contains(&want), "{e} does not name {want}");
    }

    #[test]
    fn store_types_can_cross_threads() {
        // The controller hands the store and its errors to blocking tasks.
        fn f<T: Send + Sync + 'static>() {}
        f::<StoreError>();
        f::<LocalStore>();
        f::<super::super::MemoryStore>();
        f::<super::super::Sealer>();
    }

    #[test]
    fn local_store_passes_the_contract() {
        let dir = TestDir::new("contract");
        contract(&mut LocalStore::open(dir.path()).unwrap());
    }

    #[test]
    fn records_and_the_counter_survive_close_and_reopen() {
        let dir = TestDir::new("reopen");
        let (before, top) = {
            let mut s = LocalStore::open(dir.path()).unwrap();
            assert_eq!(
                std::fs::metadata(s.path()).unwrap().permissions().mode() & 0o777,
                0o600
            );
            s.apply(&[put(1, 0, b"one"), put(2, 0, b"two")]).unwrap();
            let r2 = s.apply(&[put(3, 0, b"three")]).unwrap()[0];
            // The record with the highest revision goes: the counter must not.
            let r3 = s.apply(&[Write::Delete { id: 3, expect: r2 }]).unwrap();
            assert_eq!(r3, vec![0]);
            (sorted(&s), r2)
        };
        let mut s = LocalStore::open(dir.path()).unwrap();
        assert_eq!(sorted(&s), before);
        assert_eq!(before.len(), 2);
        let r = s.apply(&[put(3, 0, b"again")]).unwrap()[0];
        assert!(
            r > top + 1,
            "revision {r} after a counter of at least {}",
            top + 1
        );
    }

    #[test]
    fn a_missing_dir_or_a_file_in_its_place_is_named() {
        let dir = TestDir::new("dirs");
        let missing = dir.path().join("nope");
        let e = LocalStore::open(&missing).unwrap_err();
        assert!(
            matches!(&e, StoreError::NoStateDir(p) if *p == missing),
            "{e:?}"
        );
        assert!(e.to_string().contains(&missing.display().to_string()));
        assert!(e.to_string().contains("does not exist"));

        let file = dir.path().join("file");
        std::fs::write(&file, b"").unwrap();
        let e = LocalStore::open(&file).unwrap_err();
        assert!(
            matches!(&e, StoreError::NotADirectory(p) if *p == file),
            "{e:?}"
        );
        assert!(e.to_string().contains("is not a directory"));
        // Below a file.
        let e = LocalStore::open(&file.join("x")).unwrap_err();
        assert!(matches!(&e, StoreError::NotADirectory(_)), "{e:?}");
        // Nothing was created anywhere.
        assert!(!missing.exists());
    }

    #[test]
    fn a_read_only_dir_is_named() {
        let dir = TestDir::new("ro");
        let ro = dir.path().join("ro");
        std::fs::create_dir(&ro).unwrap();
        // Readable and searchable by all, writable by none: root writes through the
        // permission bits, so the child drops to nobody first when run as root.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
        let mut child = spawn_child("readonly", &ro);
        let line = child_line(&mut child);
        assert!(child.wait().unwrap().success());
        assert_eq!(line, format!("CHILD notwritable {}", ro.display()));
        assert!(!ro.join(FILE_NAME).exists());
    }

    #[test]
    fn a_garbage_file_is_refused_naming_it() {
        let dir = TestDir::new("garbage");
        let path = dir.path().join(FILE_NAME);
        std::fs::write(&path, vec![0xab; 16 * 1024]).unwrap();
        let e = LocalStore::open(dir.path()).unwrap_err();
        eprintln!("garbage file: {e}");
        assert!(matches!(e, StoreError::NotAStore { .. }), "{e:?}");
        names_file(&e, dir.path());
        // Untouched.
        assert_eq!(std::fs::read(&path).unwrap(), vec![0xab; 16 * 1024]);
    }

    #[test]
    fn a_truncated_file_is_refused_naming_it() {
        let dir = TestDir::new("truncated");
        let path = dir.path().join(FILE_NAME);
        {
            let mut s = LocalStore::open(dir.path()).unwrap();
            for i in 0..50u64 {
                s.apply(&[put(i, 0, &[i as u8; 600])]).unwrap();
            }
        }
        let full = std::fs::read(&path).unwrap();
        for len in [full.len() / 2, 4096, 100] {
            std::fs::write(&path, &full[..len]).unwrap();
            let e = LocalStore::open(dir.path()).unwrap_err();
            eprintln!("truncated to {len} of {} bytes: {e}", full.len());
            assert!(
                matches!(e, StoreError::Corrupt { .. } | StoreError::NotAStore { .. }),
                "{e:?}"
            );
            names_file(&e, dir.path());
        }
    }

    #[test]
    fn a_damaged_record_page_is_refused() {
        let dir = TestDir::new("damaged");
        let path = dir.path().join(FILE_NAME);
        {
            let mut s = LocalStore::open(dir.path()).unwrap();
            for i in 1..=50u64 {
                s.apply(&[put(i, 0, &[i as u8; 600])]).unwrap();
            }
        }
        // Damage every copy of record 7's bytes, so the live page is among them
        // whatever copy-on-write left behind.
        let mut bytes = std::fs::read(&path).unwrap();
        let pat = [7u8; 600];
        let mut hits = 0;
        let mut i = 0;
        while i + pat.len() <= bytes.len() {
            if bytes[i..i + pat.len()] == pat {
                bytes[i + 300] ^= 0x01;
                hits += 1;
                i += pat.len();
            } else {
                i += 1;
            }
        }
        assert!(hits > 0);
        std::fs::write(&path, &bytes).unwrap();
        let e = LocalStore::open(dir.path()).unwrap_err();
        eprintln!("damaged page ({hits} copies): {e}");
        assert!(matches!(e, StoreError::Corrupt { .. }), "{e:?}");
        names_file(&e, dir.path());
    }

    #[test]
    fn another_format_version_is_refused() {
        let dir = TestDir::new("version");
        let path = dir.path().join(FILE_NAME);
        drop(LocalStore::open(dir.path()).unwrap());
        {
            let db = Database::open(&path).unwrap();
            let tx = db.begin_write().unwrap();
            tx.open_table(META).unwrap().insert(K_FORMAT, 2u64).unwrap();
            tx.commit().unwrap();
        }
        let e = LocalStore::open(dir.path()).unwrap_err();
        assert!(
            matches!(
                e,
                StoreError::FormatVersion {
                    found: 2,
                    supported: 1,
                    ..
                }
            ),
            "{e:?}"
        );
        names_file(&e, dir.path());
    }

    #[test]
    fn a_redb_file_that_is_not_ours_is_refused() {
        let dir = TestDir::new("foreign");
        let path = dir.path().join(FILE_NAME);
        {
            let db = Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            const OTHER: TableDefinition<u64, u64> = TableDefinition::new("other");
            tx.open_table(OTHER).unwrap().insert(1, 1).unwrap();
            tx.commit().unwrap();
        }
        let e = LocalStore::open(dir.path()).unwrap_err();
        assert!(matches!(e, StoreError::NotAStore { .. }), "{e:?}");
        names_file(&e, dir.path());

        // A meta table of other types.
        std::fs::remove_file(&path).unwrap();
        {
            let db = Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            const META2: TableDefinition<u64, u64> = TableDefinition::new("meta");
            tx.open_table(META2).unwrap().insert(1, 1).unwrap();
            tx.commit().unwrap();
        }
        let e = LocalStore::open(dir.path()).unwrap_err();
        assert!(matches!(e, StoreError::NotAStore { .. }), "{e:?}");
        names_file(&e, dir.path());
    }

    #[test]
    fn a_second_open_in_this_process_is_locked() {
        let dir = TestDir::new("lock-same");
        let mut a = LocalStore::open(dir.path()).unwrap();
        a.apply(&[put(1, 0, b"a")]).unwrap();
        let e = LocalStore::open(dir.path()).unwrap_err();
        eprintln!("second open, same process: {e:?}");
        assert!(matches!(e, StoreError::Locked { .. }), "{e:?}");
        names_file(&e, dir.path());
        // What redb itself says, for the record.
        assert!(matches!(
            Database::create(a.path()),
            Err(redb::DatabaseError::DatabaseAlreadyOpen)
        ));
        // The first handle is unharmed, and closing it releases the lock.
        assert_eq!(a.get(1).unwrap().unwrap().1, b"a");
        drop(a);
        assert_eq!(
            LocalStore::open(dir.path())
                .unwrap()
                .get(1)
                .unwrap()
                .unwrap()
                .1,
            b"a"
        );
    }

    const CHILD_ENV: &str = "JVPN_STORE_TEST_CHILD";

    /// Runs `child_helper` in a new process of this test binary.
    fn spawn_child(mode: &str, dir: &Path) -> std::process::Child {
        Command::new(std::env::current_exe().unwrap())
            .args([
                "store::local::tests::child_helper",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, format!("{mode}:{}", dir.display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap()
    }

    /// The other process of the two tests below: `open` tries to open the store and
    /// prints what happened; `commit` commits a record, says so, and waits to be
    /// killed.
    #[test]
    #[ignore = "helper: run in a child process by the cross-process tests"]
    fn child_helper() {
        let Ok(arg) = std::env::var(CHILD_ENV) else {
            return;
        };
        let (mode, dir) = arg.split_once(':').unwrap();
        match mode {
            "open" => match LocalStore::open(Path::new(dir)) {
                Ok(_) => println!("CHILD opened"),
                Err(StoreError::Locked { path }) => println!("CHILD locked {}", path.display()),
                Err(e) => println!("CHILD error {e:?}"),
            },
            "readonly" => {
                // SAFETY: plain syscalls; this process runs this one test only.
                unsafe {
                    if libc::geteuid() == 0 {
                        assert_eq!(libc::setgid(65534), 0);
                        assert_eq!(libc::setuid(65534), 0);
                    }
                }
                match LocalStore::open(Path::new(dir)) {
                    Err(e @ StoreError::NotWritable { .. }) => {
                        let StoreError::NotWritable { dir, .. } = &e else {
                            unreachable!()
                        };
                        assert!(e.to_string().contains("is not writable"), "{e}");
                        eprintln!("read-only dir: {e}");
                        println!("CHILD notwritable {}", dir.display())
                    }
                    other => println!("CHILD unexpected {other:?}"),
                }
            }
            "commit" => {
                let mut s = LocalStore::open(Path::new(dir)).unwrap();
                let r = s.apply(&[put(7, 0, b"before the kill")]).unwrap()[0];
                println!("CHILD committed {r}");
                std::thread::sleep(Duration::from_secs(60));
            }
            _ => panic!("unknown mode {mode}"),
        }
    }

    fn child_line(child: &mut std::process::Child) -> String {
        let out = child.stdout.as_mut().unwrap();
        let mut r = BufReader::new(out);
        let mut line = String::new();
        while r.read_line(&mut line).unwrap() > 0 {
            // libtest prints `test <name> ... ` before the test's own output, on
            // the same line.
            if let Some(i) = line.find("CHILD ") {
                return line[i..].trim_end().to_owned();
            }
            line.clear();
        }
        panic!("the child said nothing");
    }

    #[test]
    fn a_second_open_in_another_process_is_locked() {
        let dir = TestDir::new("lock-other");
        let store = LocalStore::open(dir.path()).unwrap();
        let mut child = spawn_child("open", dir.path());
        let line = child_line(&mut child);
        assert!(child.wait().unwrap().success());
        let want = format!("CHILD locked {}", store.path().display());
        assert_eq!(line, want);
        drop(store);
        let mut child = spawn_child("open", dir.path());
        assert_eq!(child_line(&mut child), "CHILD opened");
        assert!(child.wait().unwrap().success());
    }

    #[test]
    fn a_commit_survives_kill_9() {
        let dir = TestDir::new("kill9");
        let mut child = spawn_child("commit", dir.path());
        let line = child_line(&mut child);
        let rev: Revision = line
            .strip_prefix("CHILD committed ")
            .unwrap_or_else(|| panic!("{line}"))
            .parse()
            .unwrap();
        child.kill().unwrap(); // SIGKILL: no destructor, no close.
        child.wait().unwrap();
        // The lock died with the process; the file was not closed cleanly, so this
        // open goes through redb's repair.
        let mut s = LocalStore::open(dir.path()).unwrap();
        assert_eq!(s.get(7).unwrap(), Some((rev, b"before the kill".to_vec())));
        let next = s.apply(&[put(8, 0, b"after")]).unwrap()[0];
        assert!(next > rev);
    }

    #[test]
    fn commit_latency_of_redb() {
        let dir = TestDir::new("latency");
        let mut s = LocalStore::open(dir.path()).unwrap();
        commit_latency(&mut s, "redb", 1000, 5);
    }
}
