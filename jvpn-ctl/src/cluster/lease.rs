//! The node's lease: granted, announced, kept alive, and its own deadline.
//!
//! etcd times the TTL on the leader's clock, this node on its own; keep-alive
//! streams can stall without an error. So the node never asks etcd whether it is
//! still alive: it counts from the moment it *sent* the last keep-alive that was
//! answered (etcd received it later, so its expiry is later still) plus the TTL,
//! minus a margin for scheduling and clock rate, and stops changing bindings once
//! that passes ([`LeaseView::valid_at`]). A leader change extends leases at etcd,
//! never shortens them, so the deadline stays on the safe side.
//!
//! Every wait on etcd is bounded (`etcd_timeout_ms`; a keep-alive unanswered that
//! long means a stalled stream, and a new one is opened). A lease etcd says is gone,
//! or one it has not confirmed for longer than its TTL (it may have expired there;
//! the node stopped acting on it at its deadline already), is given up: the node
//! takes a new lease and announces itself on it, a new term, and the gateway
//! acquires its sessions again (reviving the old lease is not tried past that
//! point: etcd-client refuses to open a keep-alive stream on a lease that ran out,
//! "lease not found"). Losing the lease, failed keep-alives (at most one warning a
//! second) and each new lease are logged.

use std::time::{Duration, Instant};

use etcd_client::{Client, PutOptions};

use super::{health, keys::Keys, thread::Config};

/// The lease as the node knows it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LeaseView {
    /// etcd's lease id (0: none granted yet, or the last one expired).
    pub id: i64,
    /// Until when this node may act as the owner of its sessions.
    pub until: Option<Instant>,
    /// Grows by one with every new lease: the sessions of an earlier one lost
    /// their owner keys with it and must be acquired again.
    pub term: u64,
}

impl LeaseView {
    /// The lease id, if the lease is certainly alive at etcd at `now`.
    pub fn valid_at(&self, now: Instant) -> Option<i64> {
        (self.id != 0 && self.until.is_some_and(|u| now < u)).then_some(self.id)
    }
}

/// The safety margin under the TTL: a tenth of it, at least 250 ms.
pub fn margin(ttl: Duration) -> Duration {
    (ttl / 10).max(Duration::from_millis(250))
}

/// How often a keep-alive goes out: a quarter of the TTL, so that three can be
/// lost before the deadline passes.
fn interval(ttl: Duration) -> Duration {
    (ttl / 4).max(Duration::from_millis(50))
}

/// Keeps the node's lease alive forever (until the runtime ends). A lease that
/// expired at etcd, or that etcd has not confirmed for longer than its TTL (so it
/// may have expired there: the node stopped acting on it at its own deadline
/// already), is given up and replaced by a new one (a new term), and the node
/// announced on it; the gateway then acquires its sessions again.
pub(super) async fn keep(
    client: Client,
    config: Config,
    view: std::sync::Arc<std::sync::Mutex<LeaseView>>,
) {
    let ttl_s = config.ttl.as_secs().max(1) as i64;
    let ttl = Duration::from_secs(ttl_s as u64);
    let mut warned = Warned::default();
    // Since when the node has had no lease (a lost one or none yet), for the log.
    let mut without: Option<Instant> = None;
    loop {
        let mut c = client.clone();
        let sent = Instant::now();
        let granted = tokio::time::timeout(config.timeout, c.lease_grant(ttl_s, None)).await;
        let id = match granted {
            Ok(Ok(g)) => {
                health::answered(&config.health, g.header());
                g.id()
            }
            failed => {
                let e = match failed {
                    Ok(Err(e)) => crate::store::etcd::describe(&e),
                    _ => format!("no answer within {:?}", config.timeout),
                };
                if warned.due(ttl) {
                    tracing::warn!(
                        "etcd {}: granting node {}'s lease: {e} (without a lease for {:?}; \
                         it changes no binding meanwhile)",
                        config.shown,
                        config.node,
                        without.map_or(Duration::ZERO, |w| w.elapsed()),
                    );
                }
                health::failed(&config.health, format!("granting the node's lease: {e}"));
                // A timeout has waited already; a refusal comes back at once.
                let rest = interval(ttl).saturating_sub(sent.elapsed());
                tokio::time::sleep(rest).await;
                continue;
            }
        };
        if let Err(e) = announce(&mut c, &config.keys, &config, id).await {
            health::failed(
                &config.health,
                format!("announcing node {}: {e}", config.node),
            );
            if warned.due(ttl) {
                tracing::warn!(
                    "etcd {}: announcing node {}: {e}",
                    config.shown,
                    config.node
                );
            }
            // Best effort: a lease nobody keeps alive runs out by itself anyway.
            let _ = tokio::time::timeout(config.timeout, c.lease_revoke(id)).await;
            tokio::time::sleep(interval(ttl).saturating_sub(sent.elapsed())).await;
            continue;
        }
        let term = {
            let mut v = view.lock().expect("lease state");
            v.id = id;
            v.until = Some(sent + ttl - margin(ttl));
            v.term += 1;
            v.term
        };
        match without.take() {
            Some(w) => tracing::warn!(
                lease = format_args!("{id:x}"),
                "node {} joined the cluster again on a new lease (term {term}) after {:?} \
                 without one: its sessions are acquired again",
                config.node,
                w.elapsed()
            ),
            None => tracing::info!(
                lease = format_args!("{id:x}"),
                "node {} joined the cluster",
                config.node
            ),
        }
        warned = Warned::default();
        let gone = keep_alive(&mut c, id, ttl, sent, &config, &view).await;
        {
            let mut v = view.lock().expect("lease state");
            v.id = 0;
            v.until = None;
        }
        without = Some(Instant::now());
        if matches!(gone, Gone::Unconfirmed { .. }) {
            // If etcd still has it (a new leader extends leases), its keys go now
            // rather than linger unrenewed: then, as after an expiry, the sessions
            // have no owner key and the new term acquires them again. Best effort:
            // unanswered, it runs out by itself (and an acquisition that finds this
            // node's key on it moves the key over).
            let _ = tokio::time::timeout(config.timeout, c.lease_revoke(id)).await;
        }
        match gone {
            Gone::Expired => tracing::error!(
                lease = format_args!("{id:x}"),
                "node {}'s lease expired at etcd: its sessions lost their owner keys; a new \
                 lease is taken and the sessions no other node took are acquired again",
                config.node
            ),
            Gone::Unconfirmed { since, why } => tracing::error!(
                lease = format_args!("{id:x}"),
                "node {}'s lease not confirmed by etcd for {since:?}, more than its TTL \
                 ({ttl:?}; last: {why}): it may have expired at etcd, so it is given up \
                 (revoked if etcd still has it); a new lease is taken and the sessions no \
                 other node took are acquired again",
                config.node
            ),
        }
    }
}

/// A rate limit for the keeper's warnings: at most one per period.
#[derive(Default)]
struct Warned {
    last: Option<Instant>,
}

impl Warned {
    fn due(&mut self, every: Duration) -> bool {
        let now = Instant::now();
        let due = self.last.is_none_or(|l| now.duration_since(l) >= every);
        if due {
            self.last = Some(now);
        }
        due
    }
}

/// Puts `nodes/<node>` on the lease.
async fn announce(c: &mut Client, keys: &Keys, config: &Config, lease: i64) -> Result<(), String> {
    let put = c.put(
        keys.node(config.node),
        config.about.as_str(),
        Some(PutOptions::new().with_lease(lease)),
    );
    match tokio::time::timeout(config.timeout, put).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(crate::store::etcd::describe(&e)),
        Err(_) => Err(format!("no answer within {:?}", config.timeout)),
    }
}

/// Why [`keep_alive`] gave the lease up.
#[derive(Debug)]
enum Gone {
    /// etcd answered that it has no such lease (any more).
    Expired,
    /// No keep-alive answered for longer than the TTL: it may have expired at etcd.
    Unconfirmed { since: Duration, why: String },
}

/// Whether etcd said the lease is not there: etcd-client's opening of a keep-alive
/// stream turns a first answer with TTL 0 into "lease not found".
fn not_found(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::LeaseKeepAliveError(m) => m.contains("not found"),
        // etcd's own error for it: "etcdserver: requested lease not found".
        etcd_client::Error::GRpcStatus(s) => s.message().contains("lease not found"),
        _ => false,
    }
}

/// Sends keep-alives until the lease is gone: etcd says so, or has not confirmed it
/// for longer than its TTL (counted from the send time of the last answered
/// keep-alive, `confirmed` at first: the grant's). A broken, refused or stalled
/// stream is opened again; every wait on etcd is bounded. Each answered keep-alive
/// moves the deadline.
async fn keep_alive(
    c: &mut Client,
    id: i64,
    ttl: Duration,
    mut confirmed: Instant,
    config: &Config,
    view: &std::sync::Mutex<LeaseView>,
) -> Gone {
    let every = interval(ttl);
    // An unanswered keep-alive older than this: the stream stalled.
    let stall = config.timeout.max(every);
    let mut warned = Warned::default();
    // Since when keep-alives go unanswered (None: the last one was answered).
    let mut failing: Option<Instant> = None;
    let confirm = |sent: Instant, granted: Duration, failing: &mut Option<Instant>| {
        view.lock().expect("lease state").until = Some(sent + granted - margin(ttl));
        if let Some(f) = failing.take() {
            tracing::info!(
                lease = format_args!("{id:x}"),
                "node {}'s lease confirmed by etcd again, {:?} after a keep-alive first failed",
                config.node,
                f.elapsed()
            );
        }
    };
    // Notes a failure; gives the lease up once it went unconfirmed past its TTL.
    let mut failed = |why: String, failing: &mut Option<Instant>, confirmed: Instant| {
        health::failed(&config.health, format!("keep-alive: {why}"));
        failing.get_or_insert_with(Instant::now);
        let unconfirmed = confirmed.elapsed();
        if unconfirmed > ttl {
            return Some(Gone::Unconfirmed {
                since: unconfirmed,
                why,
            });
        }
        if warned.due(Duration::from_secs(1)) {
            tracing::warn!(
                lease = format_args!("{id:x}"),
                "etcd {}: node {}'s keep-alive: {why} (last confirmed {:?} ago; \
                 {}live by this node's deadline)",
                config.shown,
                config.node,
                unconfirmed,
                if view
                    .lock()
                    .expect("lease state")
                    .valid_at(Instant::now())
                    .is_some()
                {
                    ""
                } else {
                    "not "
                }
            );
        }
        None
    };
    loop {
        // Opening sends the first keep-alive and waits for its answer.
        let sent = Instant::now();
        let opened = tokio::time::timeout(config.timeout, c.lease_keep_alive(id)).await;
        let (mut keeper, mut stream) = match opened {
            Ok(Ok(ks)) => {
                // etcd-client took the answer (its TTL above 0); not its header.
                health::answered(&config.health, None);
                confirmed = sent;
                confirm(sent, ttl, &mut failing);
                ks
            }
            Ok(Err(e)) if not_found(&e) => {
                health::failed(&config.health, "the lease expired at etcd".into());
                return Gone::Expired;
            }
            failed_open => {
                let why = match failed_open {
                    Ok(Err(e)) => crate::store::etcd::describe(&e),
                    _ => format!("no answer within {:?}", config.timeout),
                };
                let why = format!("opening the stream: {why}");
                if let Some(gone) = failed(why, &mut failing, confirmed) {
                    return gone;
                }
                tokio::time::sleep(every.saturating_sub(sent.elapsed())).await;
                continue;
            }
        };
        // The send times of the keep-alives not answered yet, oldest first (a
        // stream answers in order).
        let mut pending: std::collections::VecDeque<Instant> = Default::default();
        let mut next = sent + every;
        let why = loop {
            let wake = pending.front().map_or(next, |&p| next.min(p + stall));
            tokio::select! {
                m = stream.message() => match m {
                    Ok(Some(r)) if r.ttl() > 0 => {
                        health::answered(&config.health, r.header());
                        if let Some(s) = pending.pop_front() {
                            confirmed = s;
                            confirm(s, Duration::from_secs(r.ttl() as u64), &mut failing);
                        }
                    }
                    Ok(Some(_)) => {
                        health::failed(&config.health, "the lease expired at etcd".into());
                        return Gone::Expired;
                    }
                    Ok(None) => break "the stream ended".to_owned(),
                    Err(e) => break crate::store::etcd::describe(&e),
                },
                () = tokio::time::sleep_until(wake.into()) => {
                    let now = Instant::now();
                    if pending.front().is_some_and(|&p| now >= p + stall) {
                        break format!("no answer within {stall:?}");
                    }
                    if now >= next {
                        let send = tokio::time::timeout(config.timeout, keeper.keep_alive());
                        match send.await {
                            Ok(Ok(())) => pending.push_back(now),
                            Ok(Err(e)) => {
                                break format!("sending: {}", crate::store::etcd::describe(&e));
                            }
                            Err(_) => {
                                break format!("sending: not taken within {:?}", config.timeout);
                            }
                        }
                        next = now + every;
                    }
                }
            }
        };
        // A stalled or cut stream: a new one, at once (unless the lease is past
        // confirming).
        if let Some(gone) = failed(why, &mut failing, confirmed) {
            return gone;
        }
    }
}
