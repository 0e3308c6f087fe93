//! A state directory that fills up while the gateway runs: what needs a write fails
//! as a whole (a handshake gets no ESTABLISHED, a reattach gets `REATTACH_DENIED
//! store_error`), nothing in memory, the map, the exit or the store changes, the
//! gateway keeps serving its sessions, and once space is back everything works
//! again. The disk is a real tmpfs that is really full.

use std::time::Duration;

use jvpn_ctl::{
    control::api::EventRecord,
    lab::gateway::Transport::{Lte, Wifi},
    proto::{Body, Control, TransportKind},
    session::Detail,
    store::{LocalStore, SessionStore, StoreError, Write},
};
use jvpn_tests::{
    gwlab::GwLab,
    require_root,
    tclient::{TestClient, echo_server, now_ms, try_handshake},
    tmpfs::{Tmpfs, state_on_tmpfs},
    unique,
};

const ECHO: u16 = 7791;

fn value(n: u8) -> Vec<u8> {
    vec![n; 600]
}

/// The store alone: on a full disk a batch that needs new pages fails, nothing of it
/// is kept, `recover` opens the file again and says what it holds, and once there is
/// room the next batch goes through.
#[test]
fn a_full_disk_fails_the_batch_and_recover_reopens() {
    require_root!();
    let dir = std::env::temp_dir().join(unique("jvpn-sfs"));
    let fs = Tmpfs::mount(&dir, "2m").unwrap();
    let mut s = LocalStore::open(&dir).unwrap();
    let mut revs = Vec::new();
    for id in 0..20u64 {
        revs.push(s.apply(&[put(id, 0, 1)]).unwrap()[0]);
    }
    let filler = fs.fill();
    let mut next = 1000u64;
    let err = loop {
        match s.apply(&[put(next, 0, 2)]) {
            Ok(_) => next += 1,
            Err(e) => break e,
        }
        assert!(next < 100_000, "a full disk never refused a write");
    };
    eprintln!("refused after {} more records: {err}", next - 1000);
    assert!(matches!(err, StoreError::Db { .. }), "{err:?}");
    assert!(err.to_string().contains("sessions.redb"), "{err}");
    s.recover().expect("reopening a full store");
    assert_eq!(s.get(next).unwrap(), None, "the failed batch left nothing");
    assert_eq!(s.get(0).unwrap(), Some((revs[0], value(1))));
    std::fs::remove_file(filler).unwrap();
    let rev = s.apply(&[put(next, 0, 3)]).expect("room again")[0];
    assert_eq!(s.get(next).unwrap(), Some((rev, value(3))));
    drop(s);
    drop(fs);
    let _ = std::fs::remove_dir(&dir);
}

fn put(id: u64, expect: u64, v: u8) -> Write {
    Write::Put {
        id,
        expect,
        value: value(v),
    }
}

#[test]
fn a_full_state_dir_refuses_handshakes_and_reattaches_and_changes_nothing() {
    require_root!();
    // Room for the challenge of a reattach started before the disk fills.
    let mut lab = GwLab::start("gsf", "candidate_ttl_ms = 15000");
    let _echo = echo_server(&lab, ECHO);
    let mut a = TestClient::connect(&lab, Wifi);
    let id = a.id();

    // The state directory moves onto a small tmpfs.
    let fs = state_on_tmpfs(&mut lab.stack, "4m").unwrap();
    assert!(lab.session(id).is_some(), "resumed from the moved store");
    // A reattach over LTE gets its challenge while there is room.
    let req = a.reattach_request(now_ms(), TransportKind::Cellular);
    a.send_raw(Lte, &req);
    let challenge = match a.recv_control(Lte, Duration::from_secs(2)).map(|m| m.body) {
        Some(Body::ReattachChallenge { challenge }) => challenge,
        other => panic!("wanted a challenge, got {other:?}"),
    };
    let filler = fs.fill();

    // New sessions until the store needs room it does not have.
    let mut established = Vec::new();
    let refused = loop {
        let sock = lab.client_udp("10.77.2.2:0", Duration::from_millis(100));
        match try_handshake(&sock, Lte.gw_addr(), &lab.client_id, &lab.gateway_pub, 5) {
            Ok(s) => established.push((sock, s)),
            Err(e) => break e,
        }
        assert!(
            established.len() < 2000,
            "a full disk never refused a handshake"
        );
    };
    eprintln!(
        "handshake refused ({refused}) after {} new sessions on a full disk",
        established.len()
    );
    assert_eq!(
        refused, "no ESTABLISHED",
        "WELCOME needs no write, ESTABLISHED does"
    );
    assert!(lab.gateway_alive(), "a full disk does not stop the gateway");
    let sessions = lab.sessions();
    assert_eq!(
        sessions.len(),
        established.len() + 1,
        "the refused session is gone"
    );
    assert_eq!(
        lab.map_sessions(),
        sessions.len(),
        "and so is its map entry"
    );
    assert!(
        lab.stats()
            .handshakes
            .get("store_error")
            .copied()
            .unwrap_or(0)
            >= 1
    );

    // The confirm swaps the map entry to LTE, then its commit fails: the swap is
    // taken back, the client is refused, the session is as it was.
    let before = lab.gw_view(id);
    let confirm = a.control(Body::ReattachConfirm { challenge });
    a.send_raw(Lte, &confirm);
    let denied = |reply: &Option<Control>| {
        matches!(reply.as_ref().map(|m| &m.body),
            Some(Body::ReattachDenied { reason }) if *reason == Detail::StoreError.code())
    };
    let reply = a.recv_control(Lte, Duration::from_secs(2));
    assert!(denied(&reply), "{reply:?}");
    let unchanged = |lab: &GwLab, what: &str| assert_eq!(lab.gw_view(id), before, "{what}");
    unchanged(&lab, "a refused confirm");
    // The relay still sends the session's downlink to its Wi-Fi binding.
    assert_eq!(
        a.echo(Wifi, ECHO, b"still bound").as_deref(),
        Some(&b"still bound"[..])
    );

    // A new request needs a write too (its candidate): refused at once. Its
    // challenge left before the commit (a single gateway does not hold it back) and
    // is the pending one again (the same candidate), so the client's confirm of it
    // is refused the same way.
    let reply = a.reattach(Lte);
    assert!(denied(&reply), "{reply:?}");
    let reply = a.recv_control(Lte, Duration::from_secs(2));
    assert!(denied(&reply), "the confirm sent meanwhile: {reply:?}");
    unchanged(&lab, "a refused request");
    assert!(lab.events().iter().any(|e| matches!(
        e,
        EventRecord::TransportSwitchDenied { detail: Detail::StoreError, session_id, .. }
            if session_id.0 == id
    )));
    assert!(
        lab.stats()
            .reattach
            .get("store_error")
            .copied()
            .unwrap_or(0)
            >= 1
    );
    assert!(
        lab.metrics()
            .contains("jvpn_reattach_total{outcome=\"store_error\"}"),
        "the metric names the outcome"
    );

    let log = lab.stack.log("gateway");
    let line = log
        .lines()
        .find(|l| l.contains("rolled back"))
        .expect("the gateway logs the refused batches");
    eprintln!("gateway: {line}");
    assert!(line.contains("No space left on device"), "{line}");

    // Room again: the same reattach goes through, a new handshake too.
    std::fs::remove_file(&filler).unwrap();
    let reply = a.reattach(Lte).expect("an answer");
    assert!(matches!(reply.body, Body::ReattachAck { .. }), "{reply:?}");
    assert_eq!(a.echo(Lte, ECHO, b"moved").as_deref(), Some(&b"moved"[..]));
    let sock = lab.client_udp("10.77.2.2:0", Duration::from_millis(200));
    try_handshake(&sock, Lte.gw_addr(), &lab.client_id, &lab.gateway_pub, 20)
        .expect("a handshake with room in the store");

    // What memory held is what the store holds: a kill -9 brings back the same.
    let snapshot = |lab: &GwLab| {
        let mut v: Vec<_> = lab
            .sessions()
            .into_iter()
            .map(|s| (s.id.0, s.generation, s.binding, s.tunnel_addr))
            .collect();
        v.sort();
        v
    };
    let before = snapshot(&lab);
    lab.stack
        .restart("gateway", true)
        .expect("kill -9 and start");
    assert_eq!(snapshot(&lab), before);
    lab.stack.stop("gateway");
    drop(fs);
}
