//! The daemon's I/O shell around [`Core`]: loads and attaches the data plane, binds
//! the sockets, serves the control API and metrics, and feeds the core one input at
//! a time.

use std::{
    future::Future,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use ipnet::IpNet;
use tokio::{net::UdpSocket, sync::mpsc};

use super::{
    config::GatewayConfig,
    core::{Core, CoreParams, Outgoing},
    net::{SocketError, Sockets, source_for},
    persist::Commit,
    pool::Pool,
    rollback::RolledBack,
};
use crate::{
    clock::Clock,
    control::api::Stats,
    control::{self, events::EventBus},
    datapath::{AttachMode, Datapath, DatapathConfig, DatapathError},
    proto::{self, Peers, ProtoError},
    store::{EtcdStore, LocalStore, Revision, Sealer, SessionStore, StoreError, StoreKey},
};

/// Inputs handled before one group commit of the store (and the replies they
/// allow): an ACK waits at most for this batch plus one fsync (~0.7 ms here).
const BATCH: usize = 256;
/// HELLOs waiting for the controller (a second's worth at its signature rate).
const HELLO_QUEUE: usize = 4096;
/// HELLOs handled per turn of the loop when nothing else is waiting (~70 µs each).
const HELLOS_PER_TURN: usize = 8;
/// Socket batches (each up to BATCH datagrams) after which waiting HELLOs have a turn
/// even if the sockets still hold more: at most 8 × 70 µs of HELLOs per 16 batches.
const HELLO_TURN_EVERY: usize = 16;

const TICK: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Config(#[from] super::ConfigError),
    #[error(transparent)]
    Proto(#[from] ProtoError),
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error(transparent)]
    Socket(#[from] SocketError),
    #[error(transparent)]
    Control(#[from] control::ControlError),
    #[error(transparent)]
    Lock(#[from] super::lock::LockError),
    #[error("session store: {0}")]
    Store(#[from] StoreError),
    #[error("session store {store}: {cause}")]
    Record { store: String, cause: String },
    #[error("{what}: {cause}")]
    Io { what: String, cause: std::io::Error },
    #[error(
        "[pool] {key} {mine} overlaps node {node}'s pool {theirs} (announced in etcd): the \
         exit routes return traffic by tunnel address, so give each node of the cluster a pool \
         of its own"
    )]
    PoolOverlap {
        key: &'static str,
        mine: ipnet::IpNet,
        node: u16,
        theirs: ipnet::IpNet,
    },
}

/// Reads the configuration again for a reload (SIGHUP, `jvpn-ctl gateway reload`):
/// the file and the command line's overrides, validated; the error names the problem.
pub type Reloader = Box<dyn FnMut() -> Result<GatewayConfig, String>>;

/// Runs the gateway until `shutdown` resolves. Sessions outlive the process: they are
/// in the store and the pinned data plane keeps forwarding, so the next start resumes
/// them (`jvpn-ctl drain` ends them instead).
pub async fn run(
    mut cfg: GatewayConfig,
    mut reload: Reloader,
    shutdown: impl Future<Output = ()>,
) -> Result<(), GatewayError> {
    cfg.validate()?;
    // The lock lives on the pin directory, so bpffs must be there first (a fresh
    // host has none mounted on /sys/fs/bpf, and sysfs refuses the directory).
    crate::datapath::prepare_pin_dir(&cfg.pin_dir)?;
    // Before anything touches the maps, the store, the sockets or the control socket.
    let _lock = super::lock::ControllerLock::acquire(&cfg.pin_dir)?;
    let clock = Clock::new();
    // The controller's start: the previous one is gone (it held the lock), and
    // nothing can reach this one before its sockets are bound, later. HELLOs and
    // requests stamped before it are refused (`before_start`), so it must not be
    // later than the first answer a client can get.
    let started = clock.now_ms();
    let (store, sealer) = open_store(&cfg)?;
    let (mut db, records) = match store {
        Opened::Single(store) => {
            let records = load_records(store.as_ref(), &sealer, clock.now_ms())?;
            let db = Db::Single(Durable {
                store,
                sealer,
                warned: Warned::default(),
            });
            (db, records)
        }
        Opened::Cluster(c) => (Db::Cluster(Box::new(c), Some(sealer), 0), Vec::new()),
    };
    let identity = proto::identity::load(&cfg.identity)?;
    let peers = Peers::load(&cfg.peers)?;
    if peers.is_empty() {
        tracing::warn!(
            "{} lists no client keys: every HELLO will be refused (add some with `jvpn-ctl peers add`)",
            cfg.peers.display()
        );
    }
    let link_key = proto::load_link_key(&cfg.exit.link_key)?;
    let IpNet::V4(net) = cfg.pool.cidr else {
        unreachable!("validate() accepts IPv4 pools only")
    };
    let pool = Pool::dual(net, cfg.pool.net6(), &cfg.pool.reserved);
    let gw_exit_ip = source_for(cfg.exit.data).map_err(|cause| GatewayError::Io {
        what: format!(
            "finding the local address toward the exit {}",
            cfg.exit.data
        ),
        cause,
    })?;

    let mut dp = Datapath::load(DatapathConfig {
        port: cfg.port,
        max_sessions: cfg.max_sessions,
        pin_dir: cfg.pin_dir.clone(),
        debug_log: false,
    })?;
    dp.set_gate(&cfg.limits.gate())?;
    dp.enable_next_hops()?;
    let hop_events = next_hop_events(&dp)?;
    let mode = if cfg.attach == "skb" {
        AttachMode::Skb
    } else {
        AttachMode::Native
    };
    let modes = dp.attach_all(&cfg.interfaces, mode)?;
    for (i, m) in cfg.interfaces.iter().zip(&modes) {
        tracing::info!("relay attached to {i} ({m})");
    }

    let mut sockets = Sockets::bind(&cfg.interfaces, cfg.port)?;
    let link_sock = bind_link(cfg.exit.link).await?;
    let (link_tx, mut link_rx) = mpsc::channel::<Vec<u8>>(1024);
    spawn_link_reader(link_sock.clone(), cfg.exit.link, link_tx);

    let bus = EventBus::new(4096);
    let _sink = match &cfg.event_log {
        Some(p) => Some(control::events::spawn_file_sink_limited(
            p.clone(),
            &bus,
            cfg.event_log_limits(),
        )?),
        None => None,
    };
    let (call_tx, mut call_rx) = mpsc::channel::<control::server::Call>(256);
    let _server = control::server::serve(&cfg.control_socket, call_tx.clone(), bus.clone()).await?;
    let (stats_tx, mut stats_rx) = mpsc::channel::<tokio::sync::oneshot::Sender<Stats>>(64);
    let _metrics = match cfg.metrics {
        Some(addr) => Some(control::metrics::serve(addr, stats_tx.clone()).await?),
        None => None,
    };

    let mut core = Core::new(
        CoreParams {
            policy: cfg.policy.clone(),
            identity,
            peers,
            pool,
            exit_data: cfg.exit.data,
            gw_exit: SocketAddr::new(gw_exit_ip, cfg.port),
            link_key,
            start_us: started * 1000,
            node: cfg.cluster.as_ref().map_or(0, |c| c.node),
        },
        dp,
        bus,
        started,
    );
    core.set_security_aggregate_ms(cfg.security_aggregate_ms);
    let now = clock.now_ms();
    let (cl_tx, mut cl_rx) = mpsc::unbounded_channel::<crate::cluster::Change>();
    let (records, claims) = match &mut db {
        Db::Cluster(c, sealer, _) => {
            core.enable_cluster(c.node(), sealer.take().expect("sealer"));
            core.set_lease_until(lease_until_ms(c, &clock));
            let snap = c.snapshot()?;
            let pools = [
                ("cidr", "pool", Some(cfg.pool.cidr)),
                ("cidr6", "pool6", cfg.pool.cidr6),
            ];
            for (key, word, mine) in pools {
                let Some(mine) = mine else { continue };
                if let Some((node, theirs)) =
                    super::cluster::overlapping_pool(c.node(), word, mine, &snap.nodes)
                {
                    // Nothing of this node is in use yet: leave etcd as it was.
                    let _ = c.resign();
                    return Err(GatewayError::PoolOverlap {
                        key,
                        mine,
                        node,
                        theirs,
                    });
                }
            }
            let mine = core
                .split_snapshot(&snap, now)
                .map_err(|cause| GatewayError::Record {
                    store: c.describe(),
                    cause,
                })?;
            c.watch(snap.revision, cl_tx.clone())?;
            let lease = c.lease().id;
            let mut claims = Vec::new();
            let mut records = Vec::new();
            for (rev, e, owner) in mine {
                let id = e.session.id;
                match owner {
                    Some(o) if o.lease != lease => {
                        claims.push(crate::cluster::Op::Claim { id, epoch: o.epoch })
                    }
                    Some(_) => {}
                    None => claims.push(crate::cluster::Op::Acquire { id, expect: rev }),
                }
                records.push((rev, e));
            }
            (records, claims)
        }
        Db::Single(_) => (records, Vec::new()),
    };
    let r = core.resume(records, now);
    tracing::info!(
        "resumed {} sessions from {} ({} map entries restored, {} unexplained entries \
         removed, {} expired while stopped; {} other nodes' sessions admitted)",
        r.resumed,
        db.describe(),
        r.reinstalled,
        r.removed,
        r.expired,
        core.foreign_count()
    );
    if let Db::Cluster(c, _, term) = &mut db {
        *term = c.lease().term;
        let outcomes = c.commit(claims.clone());
        core.claimed(&claims, outcomes, c.lease().id, now);
    }
    // At start a store that cannot write is an error, not a rollback.
    if let Some(e) = db.commit(&mut core, now)? {
        return Err(GatewayError::Record {
            store: db.describe(),
            cause: e,
        });
    }
    tracing::info!(
        "gateway up: {} listening on {}; control socket {}",
        hex::encode(core.gateway_pub()),
        sockets
            .locals()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        cfg.control_socket.display()
    );

    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "no SIGHUP handler: reload with `jvpn-ctl gateway reload`");
            None
        }
    };
    let fault = Fault::from_env();
    let mut hellos = HelloQueue::default();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(c) = call_rx.recv() => {
                // Answered after the commit: a kill or drain the store refused did
                // not happen.
                let resp = match (&c.request, &db) {
                    (control::api::Request::ClusterStatus, Db::Cluster(cl, ..)) => {
                        cluster_status(&core, cl, clock.now_ms())
                    }
                    (control::api::Request::Reload, _) => {
                        match reload_now(&mut core, &mut cfg, &mut reload, clock.now_ms()) {
                            Ok(r) => control::api::Response::ok(&r),
                            Err(e) => control::api::Response::error(format_args!("nothing changed: {e}")),
                        }
                    }
                    _ => core.on_request(&c.request, clock.now_ms()),
                };
                let resp = match db.commit(&mut core, clock.now_ms())? {
                    Some(e) => control::api::Response::error(format_args!("nothing changed: {e}")),
                    None => resp,
                };
                let _ = c.reply.send(resp);
                flush(&mut core, &mut sockets, &link_sock, cfg.exit.link);
                continue;
            }
            // A scrape: the core's figures, typed (no JSON on the way).
            Some(reply) = stats_rx.recv() => {
                let _ = reply.send(core.stats(clock.now_ms()));
                continue;
            }
            Some(f) = link_rx.recv() => core.on_link_frame(&f, clock.now_ms()),
            Some(()) = async { hangup.as_mut()?.recv().await }, if hangup.is_some() => {
                tracing::info!("SIGHUP: reloading the configuration and the peers file");
                if let Err(e) = reload_now(&mut core, &mut cfg, &mut reload, clock.now_ms()) {
                    tracing::error!("reload refused, nothing changed: {e}");
                }
            }
            Some(ch) = cl_rx.recv() => {
                db.on_change(&mut core, ch, &cl_tx, clock.now_ms())?;
                while let Ok(ch) = cl_rx.try_recv() {
                    db.on_change(&mut core, ch, &cl_tx, clock.now_ms())?;
                }
            }
            r = hop_events.readable() => {
                // Cleared first: the drain reads until the socket is empty, so a
                // notification that arrives meanwhile wakes the next turn.
                if let Ok(mut g) = r {
                    g.clear_ready();
                }
                if let Err(e) = core.dp.process_next_hop_events() {
                    tracing::warn!(error = %e, "next-hop table: processing changes failed");
                }
            }
            _ = tick.tick() => {
                db.keep_lease(&mut core, &clock);
                core.tick(clock.now_ms());
                core.dp.rotate_cookie_if_due();
            }
            // Known sessions first: every datagram of a session (KEEPALIVE, REATTACH_*,
            // CONFIRM, CLOSE) is handled as it is read; HELLOs, each a signature check,
            // wait in a bounded queue and are taken a few at a time only when no
            // socket has anything else, so a HELLO flood delays no session's answer by
            // more than those few.
            () = sockets.readable() => {
                let now = clock.now_ms();
                sockets.recv(BATCH, |local, peer, data| {
                    if data.get(1) == Some(&jvpn_common::wire::msg_type::HELLO) {
                        hellos.push(local, peer, data);
                    } else {
                        core.on_datagram(local, peer, data, now);
                    }
                });
                // Priority, not starvation: a controller saturated by its sessions'
                // traffic (the sockets never empty) still takes a few HELLOs every
                // HELLO_TURN_EVERY batches, or it would admit no new session at all.
                if hellos.turn_due() {
                    hellos.handle(&mut core, &clock);
                }
            }
            () = std::future::ready(()), if !hellos.is_empty() => hellos.handle(&mut core, &clock),
        }
        // Durable before visible: no reply of this batch leaves before its records
        // are written. A batch the store refuses is rolled back (its requests
        // refused); a store that cannot say what it holds stops the controller
        // here, with the replies unsent, and the next start resumes from the store.
        send(
            core.take_early(),
            &mut core,
            &mut sockets,
            &link_sock,
            cfg.exit.link,
        );
        core.note_hellos_shed(hellos.take_shed());
        let swapped = core.take_swapped();
        fault.at(swapped, Fault::SwapBeforeCommit);
        db.commit(&mut core, clock.now_ms())?;
        fault.at(swapped, Fault::SwapAfterCommit);
        flush(&mut core, &mut sockets, &link_sock, cfg.exit.link);
    }

    // Drained sessions may still be waiting for the exit's REVOKE acknowledgement:
    // ticks retransmit link messages meanwhile.
    let deadline = Instant::now() + Duration::from_millis(500);
    while core.link_pending() > 0 && Instant::now() < deadline {
        if let Ok(Some(f)) = tokio::time::timeout(Duration::from_millis(50), link_rx.recv()).await {
            core.on_link_frame(&f, clock.now_ms());
        }
        core.tick(clock.now_ms());
        db.commit(&mut core, clock.now_ms())?;
        flush(&mut core, &mut sockets, &link_sock, cfg.exit.link);
    }
    if core.link_pending() > 0 {
        tracing::warn!(
            "{} link messages (key installs or revocations) not acknowledged by the exit",
            core.link_pending()
        );
    }
    db.commit(&mut core, clock.now_ms())?;
    tracing::info!(
        "gateway stopped; {} sessions kept in {} (the data plane keeps forwarding; the \
         next start resumes them, `jvpn-ctl drain` ends them)",
        core.session_count(),
        db.describe()
    );
    Ok(())
}

/// A reload: the configuration read again, what may change applied to the core, the
/// running configuration updated to match; on an error nothing changed.
fn reload_now(
    core: &mut Core,
    cfg: &mut GatewayConfig,
    reload: &mut Reloader,
    now_ms: u64,
) -> Result<control::api::Reloaded, String> {
    let new = reload()?;
    // The running file: a new `peers` path is one of the settings for a restart.
    let peers = Peers::load(&cfg.peers).map_err(|e| e.to_string())?;
    let r = core.apply_reload(cfg, &new, peers, now_ms)?;
    cfg.policy = new.policy;
    cfg.limits = new.limits;
    cfg.security_aggregate_ms = new.security_aggregate_ms;
    let list = |v: &[String]| {
        if v.is_empty() {
            "nothing".to_owned()
        } else {
            v.join(", ")
        }
    };
    tracing::info!(
        "reloaded: {} peers (+{} -{}), {} sessions of removed peers closed; applied: {}",
        r.peers,
        r.peers_added,
        r.peers_removed,
        r.sessions_closed,
        list(&r.applied)
    );
    if !r.need_restart.is_empty() {
        tracing::warn!(
            "changed in the configuration but applied only by a restart: {}",
            r.need_restart.join(", ")
        );
    }
    Ok(r)
}

/// Test-only crash points around a binding swap (`JVPN_TEST_FAULT`): the process
/// aborts, as a crash would, after a batch that swapped a binding — before its
/// records are committed (`swap-before-commit`: the map is ahead of the store) or
/// after the commit and before its REATTACH_ACK leaves (`swap-after-commit`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    SwapBeforeCommit,
    SwapAfterCommit,
}

impl Fault {
    fn from_env() -> Self {
        match std::env::var("JVPN_TEST_FAULT").as_deref() {
            Ok("swap-before-commit") => Self::SwapBeforeCommit,
            Ok("swap-after-commit") => Self::SwapAfterCommit,
            _ => Self::None,
        }
    }

    fn at(self, swapped: bool, here: Fault) {
        if swapped && self == here {
            tracing::error!("JVPN_TEST_FAULT: aborting at {}", here.name());
            std::process::abort();
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::SwapBeforeCommit => "swap-before-commit",
            Self::SwapAfterCommit => "swap-after-commit",
        }
    }
}

enum Opened {
    Single(Box<dyn SessionStore>),
    Cluster(crate::cluster::Cluster),
}

/// Creates the state directory (0700) and the store key on first start.
fn open_store(cfg: &GatewayConfig) -> Result<(Opened, Sealer), GatewayError> {
    let dir = &cfg.state_dir;
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(|cause| GatewayError::Io {
            what: format!("creating the state directory {}", dir.display()),
            cause,
        })?;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|cause| {
            GatewayError::Io {
                what: format!("setting the mode of {}", dir.display()),
                cause,
            }
        })?;
    }
    let key_path = cfg
        .store_key
        .clone()
        .unwrap_or_else(|| dir.join("store.key"));
    let (key, created) = StoreKey::load_or_create(&key_path)?;
    if created {
        tracing::warn!(
            "created the store key {}: back it up with {} (without it the stored sessions \
             cannot be read)",
            key_path.display(),
            dir.display()
        );
    }
    if let Some(c) = &cfg.cluster {
        let cluster = crate::cluster::Cluster::join(crate::cluster::JoinParams {
            endpoints: c.etcd_endpoints.clone(),
            root: c.root.clone(),
            node: c.node,
            ttl: Duration::from_secs(c.lease_ttl_s),
            timeout: Duration::from_millis(c.etcd_timeout_ms),
            about: format!(
                "pid={} port={} pool={}{} interfaces={}",
                std::process::id(),
                cfg.port,
                cfg.pool.cidr,
                cfg.pool
                    .cidr6
                    .map(|c| format!(" pool6={c}"))
                    .unwrap_or_default(),
                cfg.interfaces.join(",")
            ),
        })?;
        tracing::info!(
            "node {} joined the cluster at {}",
            c.node,
            cluster.describe()
        );
        return Ok((Opened::Cluster(cluster), Sealer::new(&key)));
    }
    let store: Box<dyn SessionStore> = match cfg.store.backend.as_str() {
        "etcd" => Box::new(
            EtcdStore::connect(
                &cfg.store.etcd_endpoints,
                &cfg.store.etcd_prefix,
                Duration::from_millis(cfg.store.etcd_timeout_ms),
            )?
            .with_max_batch(cfg.store.etcd_max_txn_ops),
        ),
        _ => Box::new(LocalStore::open(dir)?),
    };
    Ok((Opened::Single(store), Sealer::new(&key)))
}

/// `jvpn-ctl cluster status`: the core's view and what the etcd client thread last
/// heard (shared state; the loop never waits for etcd to answer it).
pub(super) fn cluster_status(
    core: &Core,
    c: &crate::cluster::Cluster,
    now_ms: u64,
) -> control::api::Response {
    match core.cluster_status(now_ms) {
        Some(mut s) => {
            super::cluster::etcd_facts(c, &mut s);
            control::api::Response::ok(&s)
        }
        None => control::api::Response::error(control::api::NOT_A_CLUSTER),
    }
}

/// The lease's deadline on the core's clock.
pub(super) fn lease_until_ms(c: &crate::cluster::Cluster, clock: &Clock) -> u64 {
    let now = Instant::now();
    match c.lease().until {
        Some(u) if u > now => clock.now_ms() + (u - now).as_millis() as u64,
        _ => 0,
    }
}

/// Where the records go: one store, or the cluster (its sealer until the core has
/// it, and the lease term the core's sessions were acquired under).
enum Db {
    Single(Durable),
    Cluster(Box<crate::cluster::Cluster>, Option<Sealer>, u64),
}

impl Db {
    fn describe(&self) -> String {
        match self {
            Db::Single(d) => d.store.describe(),
            Db::Cluster(c, ..) => c.describe(),
        }
    }

    /// The group commit; `Some(problem)`: refused and rolled back.
    fn commit(&mut self, core: &mut Core, now_ms: u64) -> Result<Option<String>, GatewayError> {
        match self {
            Db::Single(d) => Ok(d.commit(core, now_ms)?.map(|e| e.to_string())),
            Db::Cluster(c, ..) => {
                let r = core
                    .persist_cluster(c, now_ms)
                    .map_err(|cause| GatewayError::Record {
                        store: c.describe(),
                        cause,
                    })?;
                Ok((r.lost + r.in_doubt + r.no_lease > 0).then(|| {
                    format!(
                        "{} writes refused by the cluster, {} without an answer, {} not sent \
                         (this node's lease is not confirmed)",
                        r.lost, r.in_doubt, r.no_lease
                    )
                }))
            }
        }
    }

    fn on_change(
        &mut self,
        core: &mut Core,
        ch: crate::cluster::Change,
        tx: &mpsc::UnboundedSender<crate::cluster::Change>,
        now_ms: u64,
    ) -> Result<(), GatewayError> {
        let Db::Cluster(c, ..) = self else {
            return Ok(());
        };
        if ch != crate::cluster::Change::Resync {
            core.on_cluster_change(ch, now_ms);
            return Ok(());
        }
        // The watch missed changes: every session as the cluster holds it now.
        tracing::warn!("the cluster watch fell behind: reading every session again");
        let snap = c.snapshot()?;
        core.note_nodes(&snap.nodes);
        for (id, s) in &snap.sessions {
            core.on_cluster_change(
                crate::cluster::Change::Owner {
                    id: *id,
                    owner: s.owner,
                },
                now_ms,
            );
            core.on_cluster_change(
                crate::cluster::Change::Record {
                    id: *id,
                    record: s.record.clone(),
                },
                now_ms,
            );
        }
        c.watch(snap.revision, tx.clone())?;
        Ok(())
    }

    /// The lease deadline into the core; a new lease (the old one ran out at etcd)
    /// means every session of this node lost its owner key: acquired again unless
    /// another node took it meanwhile.
    fn keep_lease(&mut self, core: &mut Core, clock: &Clock) {
        let Db::Cluster(c, _, term) = self else {
            return;
        };
        core.set_lease_until(lease_until_ms(c, clock));
        let now = c.lease();
        if now.term == *term || now.id == 0 {
            let ops = core.claims_to_retry(clock.now_ms());
            if !ops.is_empty() {
                let outcomes = c.commit(ops.clone());
                core.claimed(&ops, outcomes, now.id, clock.now_ms());
            }
            return;
        }
        *term = now.term;
        let ops = core.reacquire_ops();
        tracing::warn!(
            "new lease: acquiring this node's {} sessions again",
            ops.len()
        );
        let outcomes = c.commit(ops.clone());
        core.claimed(&ops, outcomes, now.id, clock.now_ms());
    }
}

/// Every record, unsealed and decoded; one that fails refuses the start (naming the
/// store and the session) rather than resuming half of them.
pub fn load_records(
    store: &dyn SessionStore,
    sealer: &Sealer,
    now_ms: u64,
) -> Result<Vec<(Revision, super::core::Entry)>, GatewayError> {
    let bad = |cause: String| GatewayError::Record {
        store: store.describe(),
        cause,
    };
    let mut out = Vec::new();
    for (id, rev, sealed) in store.list()? {
        let plain = sealer
            .open(id, &sealed)
            .map_err(|e| bad(format!("{e}: sealed under another store key, or damaged")))?;
        let rec =
            super::record::SessionRecord::decode(id, &plain).map_err(|e| bad(e.to_string()))?;
        out.push((rev, rec.into_entry(now_ms)));
    }
    Ok(out)
}

/// The store, the sealer of its records, and the rate limit of its failure report.
struct Durable {
    store: Box<dyn SessionStore>,
    sealer: Sealer,
    warned: Warned,
}

impl Durable {
    /// One group commit of what the core changed. A batch the store refused is
    /// rolled back: its error is returned as `Some` (and logged, at most once a
    /// second); an error the controller cannot carry on from stops it (its replies
    /// for this batch are not sent).
    fn commit(&mut self, core: &mut Core, now_ms: u64) -> Result<Option<StoreError>, GatewayError> {
        match core.persist(self.store.as_mut(), &self.sealer, now_ms)? {
            Commit::Durable => Ok(None),
            Commit::RolledBack { error, refused } => {
                self.warned.note(now_ms, &error, refused);
                Ok(Some(error))
            }
        }
    }
}

/// Rate limit of the store-failure warning: a full disk under a flood of
/// handshakes fails every batch.
#[derive(Default)]
struct Warned {
    last_ms: u64,
    since: u64,
}

impl Warned {
    fn note(&mut self, now_ms: u64, e: &StoreError, r: RolledBack) {
        self.since += 1;
        if now_ms < self.last_ms + 1000 && self.last_ms != 0 {
            return;
        }
        tracing::error!(
            "session store: {e}: {} batches rolled back since the last report (this one: \
             {} sessions put back, {} reattaches and {} handshakes refused with store_error)",
            self.since,
            r.sessions,
            r.reattaches,
            r.handshakes
        );
        self.last_ms = now_ms;
        self.since = 0;
    }
}

fn flush(core: &mut Core, sockets: &mut Sockets, link: &UdpSocket, exit_link: SocketAddr) {
    let out = core.take_out();
    send(out, core, sockets, link, exit_link);
}

fn send(
    out: Vec<Outgoing>,
    core: &mut Core,
    sockets: &mut Sockets,
    link: &UdpSocket,
    exit_link: SocketAddr,
) {
    for o in out {
        let sent = match o {
            Outgoing::Udp {
                local, peer, data, ..
            } => sockets.queue(local, peer, &data),
            Outgoing::Link { data, .. } => link.try_send_to(&data, exit_link).is_ok(),
        };
        if !sent {
            core.note_send_failure();
        }
    }
    for _ in 0..sockets.flush() {
        core.note_send_failure();
    }
}

/// HELLOs read and not yet handled, oldest first. Bounded: the XDP gate caps the
/// HELLOs that reach the controller (docs/datapath.md, "The HELLO gate"), so a full
/// queue means more arrive than the controller verifies; the newest are shed.
#[derive(Default)]
struct HelloQueue {
    q: std::collections::VecDeque<(SocketAddr, SocketAddr, Vec<u8>)>,
    shed: u64,
    /// Socket batches read since HELLOs last had a turn.
    batches: usize,
}

impl HelloQueue {
    /// HELLOs wait, and have waited HELLO_TURN_EVERY batches of other datagrams.
    fn turn_due(&mut self) -> bool {
        self.batches += 1;
        !self.q.is_empty() && self.batches >= HELLO_TURN_EVERY
    }

    /// Up to HELLOS_PER_TURN of them, oldest first.
    fn handle(&mut self, core: &mut Core, clock: &Clock) {
        self.batches = 0;
        for _ in 0..HELLOS_PER_TURN {
            let Some((local, peer, data)) = self.pop() else {
                break;
            };
            core.on_datagram(local, peer, &data, clock.now_ms());
        }
    }

    fn push(&mut self, local: SocketAddr, peer: SocketAddr, data: &[u8]) {
        if self.q.len() < HELLO_QUEUE {
            self.q.push_back((local, peer, data.to_vec()));
        } else {
            self.shed += 1;
        }
    }

    fn pop(&mut self) -> Option<(SocketAddr, SocketAddr, Vec<u8>)> {
        self.q.pop_front()
    }

    fn is_empty(&self) -> bool {
        self.q.is_empty()
    }

    fn take_shed(&mut self) -> u64 {
        std::mem::take(&mut self.shed)
    }
}

async fn bind_link(exit_link: SocketAddr) -> Result<Arc<UdpSocket>, GatewayError> {
    let any: SocketAddr = if exit_link.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    UdpSocket::bind(any)
        .await
        .map(Arc::new)
        .map_err(|cause| GatewayError::Io {
            what: "binding the exit link socket".into(),
            cause,
        })
}

fn spawn_link_reader(sock: Arc<UdpSocket>, exit_link: SocketAddr, tx: mpsc::Sender<Vec<u8>>) {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                continue;
            };
            // Only the exit speaks on this socket; anything else is noise.
            if from != exit_link {
                continue;
            }
            if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(buf[..n].to_vec()) {
                break;
            }
        }
    });
}

/// The next-hop table's notification socket, for the loop: a duplicate, so that the
/// registration never outlives the descriptor it watches whatever the drop order.
fn next_hop_events(
    dp: &Datapath,
) -> Result<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>, GatewayError> {
    use std::os::fd::BorrowedFd;
    let err = |cause| GatewayError::Io {
        what: "watching rtnetlink notifications".into(),
        cause,
    };
    let raw = dp.next_hop_fd().expect("enabled just before");
    // SAFETY: the table's socket is open for as long as `dp` lives, which covers this
    // call; the duplicate is ours.
    let fd = unsafe { BorrowedFd::borrow_raw(raw) }
        .try_clone_to_owned()
        .map_err(err)?;
    // SAFETY: the OwnedFd is a valid, open descriptor that the AsyncFd owns (and so
    // keeps open and unchanged) for its whole life.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(|e| err(e.into_parts().1))
}

#[cfg(test)]
mod hello_queue_tests {
    use super::*;

    #[test]
    fn waiting_hellos_get_a_turn_every_few_batches_and_the_queue_is_bounded() {
        let mut q = HelloQueue::default();
        let a: SocketAddr = "10.0.0.1:1".parse().unwrap();
        // Nothing waiting: never due, however busy the sockets.
        assert!((0..100).all(|_| !q.turn_due()));
        q.push(a, a, b"hello");
        q.batches = 0;
        let due: Vec<bool> = (0..HELLO_TURN_EVERY).map(|_| q.turn_due()).collect();
        assert_eq!(due.iter().filter(|d| **d).count(), 1);
        assert!(
            due[HELLO_TURN_EVERY - 1],
            "due on the last batch of the round"
        );
        for _ in 0..HELLO_QUEUE + 10 {
            q.push(a, a, b"hello");
        }
        assert_eq!(q.q.len(), HELLO_QUEUE);
        assert_eq!(q.take_shed(), 11);
        assert_eq!(q.take_shed(), 0);
    }
}
