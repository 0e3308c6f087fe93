//! What every [`SessionStore`] must do, as one test run against each backend, and a
//! scratch directory for the tests that touch the file system.

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

use super::{Revision, SessionStore, StoreError, Write};

/// A fresh directory under the system temp dir, removed on drop, so a failing test
/// does not leave its files behind (nor hand them to the next run).
pub(crate) struct TestDir(PathBuf);

impl TestDir {
    pub(crate) fn new(name: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p =
            std::env::temp_dir().join(format!("jvpn-store-test-{}-{n}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create test dir");
        Self(p)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(crate) fn put(id: u64, expect: Revision, value: &[u8]) -> Write {
    Write::Put {
        id,
        expect,
        value: value.to_vec(),
    }
}

fn del(id: u64, expect: Revision) -> Write {
    Write::Delete { id, expect }
}

pub(crate) fn sorted(s: &impl SessionStore) -> Vec<(u64, Revision, Vec<u8>)> {
    let mut l = s.list().expect("list");
    l.sort();
    l
}

fn expect_conflict(r: Result<Vec<Revision>, StoreError>, id: u64, expected: u64, found: u64) {
    match r {
        Err(StoreError::Conflict {
            id: i,
            expected: e,
            found: f,
        }) => assert_eq!((i, e, f), (id, expected, found)),
        other => panic!("expected a conflict on {id}, got {other:?}"),
    }
}

/// Runs the contract on an empty store.
pub(crate) fn contract(s: &mut impl SessionStore) {
    assert!(s.list().unwrap().is_empty());
    assert_eq!(s.get(1).unwrap(), None);
    assert_eq!(s.apply(&[]).unwrap(), Vec::<Revision>::new());

    // Create.
    let r1 = s.apply(&[put(1, 0, b"a")]).unwrap();
    assert_eq!(r1.len(), 1);
    let r1 = r1[0];
    assert!(r1 > 0);
    assert_eq!(s.get(1).unwrap(), Some((r1, b"a".to_vec())));

    // A batch is one new revision, shared by its Puts.
    let r2 = s.apply(&[put(2, 0, b"b"), put(3, 0, b"c")]).unwrap();
    assert_eq!(r2.len(), 2);
    assert_eq!(r2[0], r2[1]);
    let r2 = r2[0];
    assert!(r2 > r1);

    // Update with the right revision.
    let r3 = s.apply(&[put(1, r1, b"a2")]).unwrap()[0];
    assert!(r3 > r2);
    assert_eq!(s.get(1).unwrap(), Some((r3, b"a2".to_vec())));

    let before = sorted(s);
    assert_eq!(
        before,
        vec![
            (1, r3, b"a2".to_vec()),
            (2, r2, b"b".to_vec()),
            (3, r2, b"c".to_vec()),
        ]
    );

    // A stale Put fails the whole batch, the valid write before it included.
    expect_conflict(
        s.apply(&[put(2, r2, b"b2"), put(4, 0, b"d"), put(1, r1, b"x")]),
        1,
        r1,
        r3,
    );
    assert_eq!(sorted(s), before);
    // Creating what exists.
    expect_conflict(s.apply(&[put(1, 0, b"x")]), 1, 0, r3);
    // Updating what does not exist.
    expect_conflict(s.apply(&[put(9, 5, b"x")]), 9, 5, 0);
    // A stale Delete, after a valid one.
    expect_conflict(s.apply(&[del(3, r2), del(2, r1)]), 2, r1, r2);
    // Deleting what does not exist, with a revision.
    expect_conflict(s.apply(&[del(9, r2)]), 9, r2, 0);
    // The same id twice.
    match s.apply(&[put(5, 0, b"e"), del(3, r2), put(5, 0, b"f")]) {
        Err(StoreError::DuplicateId(5)) => {}
        other => panic!("expected DuplicateId(5), got {other:?}"),
    }
    assert_eq!(sorted(s), before);
    assert_eq!(s.get(4).unwrap(), None);

    // Delete and Put together; the Delete reports 0.
    let r4 = s.apply(&[del(3, r2), put(4, 0, b"d")]).unwrap();
    assert_eq!(r4[0], 0);
    let r4 = r4[1];
    assert!(r4 > r3);
    assert_eq!(s.get(3).unwrap(), None);
    assert_eq!(
        sorted(s),
        vec![
            (1, r3, b"a2".to_vec()),
            (2, r2, b"b".to_vec()),
            (4, r4, b"d".to_vec()),
        ]
    );

    // Deleting an absent record expecting it absent is a no-op that succeeds.
    assert_eq!(s.apply(&[del(3, 0)]).unwrap(), vec![0]);
    assert_eq!(s.get(3).unwrap(), None);

    // A re-created record gets a revision it never had: revisions only grow.
    let r5 = s.apply(&[put(3, 0, b"c2")]).unwrap()[0];
    assert!(r5 > r4 && r5 != r2);
    assert_eq!(s.get(3).unwrap(), Some((r5, b"c2".to_vec())));

    // An empty value and a large one are records like any other.
    let big = vec![0x5a; 64 * 1024];
    let r6 = s.apply(&[put(6, 0, b""), put(7, 0, &big)]).unwrap();
    assert_eq!(s.get(6).unwrap(), Some((r6[0], Vec::new())));
    assert_eq!(s.get(7).unwrap(), Some((r6[1], big)));
    let r7 = s.apply(&[del(6, r6[0]), del(7, r6[1])]).unwrap();
    assert_eq!(r7, vec![0, 0]);
    assert_eq!(s.list().unwrap().len(), 4);
}

/// Prints the latency of `apply` on `s`: 50 single 600-byte Puts, then `rounds`
/// batches of `batch` Puts (a figure for docs/gateway.md, not an assertion).
pub(crate) fn commit_latency(s: &mut impl SessionStore, label: &str, batch: u64, rounds: u64) {
    use std::time::{Duration, Instant};
    let value = vec![0x42u8; 600];
    let n = 50u64;
    let mut one = Vec::new();
    for id in 0..n {
        let t = Instant::now();
        s.apply(&[put(id, 0, &value)]).expect("a single put");
        one.push(t.elapsed());
    }
    let mut many = Vec::new();
    for round in 0..rounds {
        let writes: Vec<Write> = (0..batch)
            .map(|i| put(1_000_000 * (round + 1) + i, 0, &value))
            .collect();
        let t = Instant::now();
        s.apply(&writes).expect("a batch of puts");
        many.push(t.elapsed());
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let show = |what: String, v: &mut Vec<Duration>| {
        v.sort();
        eprintln!(
            "{label} apply, {what}, {} runs: min {:.2} ms, median {:.2} ms, max {:.2} ms",
            v.len(),
            ms(v[0]),
            ms(v[v.len() / 2]),
            ms(v[v.len() - 1])
        );
    };
    show("one 600-byte Put".into(), &mut one);
    show(format!("{batch} 600-byte Puts"), &mut many);
    assert_eq!(s.list().expect("list").len(), (n + batch * rounds) as usize);
}
