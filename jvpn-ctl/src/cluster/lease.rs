//! The node's lease: granted, announced, kept alive, and its own deadline.
//!
//! etcd times the TTL on the leader's clock, this node on its own; keep-alive
//! streams can stall without an error. So the node never asks etcd whether it is
//! still alive: it counts from the moment it *sent* the last keep-alive that was
//! answered (etcd received it later, so its expiry is later still) plus the TTL,
//! minus a margin for scheduling and clock rate, and stops changing bindings once
//! that passes ([`LeaseView::valid_at`]). A leader change extends leases at etcd,
//! never shortens them, so the deadline stays on the safe side.

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

/// Keeps the node's lease alive forever (until the runtime ends); a lease that
/// expired is replaced by a new one (a new term), and the node announced on it.
pub(super) async fn keep(
    client: Client,
    config: Config,
    view: std::sync::Arc<std::sync::Mutex<LeaseView>>,
) {
    let ttl_s = config.ttl.as_secs().max(1) as i64;
    let ttl = Duration::from_secs(ttl_s as u64);
    loop {
        let mut c = client.clone();
        let sent = Instant::now();
        let granted = tokio::time::timeout(config.timeout, c.lease_grant(ttl_s, None)).await;
        let id = match granted {
            Ok(Ok(g)) => {
                health::answered(&config.health, g.header());
                g.id()
            }
            Ok(Err(e)) => {
                let e = crate::store::etcd::describe(&e);
                tracing::warn!("etcd {}: granting the node's lease: {e}", config.shown);
                health::failed(&config.health, format!("granting the node's lease: {e}"));
                tokio::time::sleep(interval(ttl)).await;
                continue;
            }
            Err(_) => {
                let e = format!(
                    "granting the node's lease: no answer within {:?}",
                    config.timeout
                );
                health::failed(&config.health, e);
                continue;
            }
        };
        if let Err(e) = announce(&mut c, &config.keys, &config, id).await {
            health::failed(
                &config.health,
                format!("announcing node {}: {e}", config.node),
            );
            tracing::warn!(
                "etcd {}: announcing node {}: {e}",
                config.shown,
                config.node
            );
            let _ = c.lease_revoke(id).await;
            tokio::time::sleep(interval(ttl)).await;
            continue;
        }
        {
            let mut v = view.lock().expect("lease state");
            v.id = id;
            v.until = Some(sent + ttl - margin(ttl));
            v.term += 1;
        }
        tracing::info!(
            lease = format_args!("{id:x}"),
            "node {} joined the cluster",
            config.node
        );
        let expired = keep_alive(&mut c, id, ttl, &config, &view).await;
        if expired {
            tracing::error!(
                lease = format_args!("{id:x}"),
                "node {}'s lease expired at etcd: its sessions lost their owner keys; a new \
                 lease is taken and the sessions no other node took are acquired again",
                config.node
            );
            let mut v = view.lock().expect("lease state");
            v.id = 0;
            v.until = None;
        }
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

/// Sends keep-alives until etcd says the lease is gone (true); a broken stream is
/// opened again. Each answered keep-alive moves the deadline.
async fn keep_alive(
    c: &mut Client,
    id: i64,
    ttl: Duration,
    config: &Config,
    view: &std::sync::Mutex<LeaseView>,
) -> bool {
    let every = interval(ttl);
    loop {
        let opened = tokio::time::timeout(config.timeout, c.lease_keep_alive(id)).await;
        let (mut keeper, mut stream) = match opened {
            Ok(Ok(ks)) => ks,
            failed => {
                let why = match failed {
                    Ok(Err(e)) => crate::store::etcd::describe(&e),
                    _ => format!("no answer within {:?}", config.timeout),
                };
                health::failed(
                    &config.health,
                    format!("opening the keep-alive stream: {why}"),
                );
                tokio::time::sleep(every).await;
                continue;
            }
        };
        loop {
            let sent = Instant::now();
            if let Err(e) = keeper.keep_alive().await {
                let e = crate::store::etcd::describe(&e);
                health::failed(&config.health, format!("sending a keep-alive: {e}"));
                break;
            }
            match tokio::time::timeout(every, stream.message()).await {
                Ok(Ok(Some(r))) if r.ttl() > 0 => {
                    health::answered(&config.health, r.header());
                    let granted = Duration::from_secs(r.ttl() as u64);
                    view.lock().expect("lease state").until = Some(sent + granted - margin(ttl));
                }
                Ok(Ok(Some(_))) => {
                    health::failed(&config.health, "the lease expired at etcd".into());
                    return true;
                }
                // A stalled or cut stream: a new one, at once.
                cut => {
                    let why = match cut {
                        Ok(Err(e)) => crate::store::etcd::describe(&e),
                        Ok(Ok(None)) => "the stream ended".into(),
                        _ => format!("no answer within {every:?}"),
                    };
                    health::failed(&config.health, format!("keep-alive: {why}"));
                    break;
                }
            }
            let next = sent + every;
            tokio::time::sleep_until(next.into()).await;
        }
    }
}
