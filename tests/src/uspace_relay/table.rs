//! The session table as the workers read it, and the steering decision: step 4 of
//! the XDP relay (docs/datapath.md, "Per packet").

use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
};

use anyhow::bail;
use jvpn_common::{
    maps::{Endpoint, SessionEntry},
    wire::{Kind, WireHeader},
};

use super::socket::SockAddr;

/// Session ids are random 64-bit values, so one multiply hashes them as well as
/// SipHash does, at a fraction of the per-packet cost. The folds keep the bits the
/// table indexes with (low) and tags with (high) both mixed. Lookups never insert, so
/// chosen ids in packets cannot lengthen the table's probe chains.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(self.0 ^ u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        let x = (n ^ (n >> 32)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = x ^ (x >> 29);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Where a steered datagram goes: the worker's socket with this index (every worker
/// binds the same local endpoints in the same order) and the destination.
pub struct Hop {
    pub sock: usize,
    pub dst: SockAddr,
    pub dst_len: libc::socklen_t,
}

/// A session as the fast path needs it, destinations already in kernel form.
struct Route {
    forwarding: bool,
    client: Endpoint,
    exit: Endpoint,
    to_exit: Hop,
    to_client: Hop,
}

/// The session table, shared read-only by all workers.
pub struct Table {
    /// The gateway's own endpoints, each bound once per worker, in this order.
    pub locals: Vec<Endpoint>,
    routes: HashMap<u64, Route, BuildHasherDefault<IdHasher>>,
}

pub fn show(e: &Endpoint) -> String {
    e.socket_addr()
        .map_or_else(|| format!("{e:?}"), |a| a.to_string())
}

impl Table {
    pub fn new(sessions: &HashMap<u64, SessionEntry>) -> anyhow::Result<Self> {
        if sessions.is_empty() {
            bail!("the session table is empty: there would be nothing to relay");
        }
        let mut locals = Vec::new();
        let mut local = |e: &Endpoint| match locals.iter().position(|l: &Endpoint| same(l, e)) {
            Some(i) => i,
            None => {
                locals.push(*e);
                locals.len() - 1
            }
        };
        let mut routes = HashMap::default();
        for (&id, e) in sessions {
            if id == 0 || !e.is_valid() {
                bail!(
                    "session {id:#018x} is invalid (id 0, a zero port, an unknown family, or a \
                     client/gw_client or exit/gw_exit family mismatch): {e:?}"
                );
            }
            let hop = |sock, dst: &Endpoint| {
                let (dst, dst_len) = SockAddr::from_endpoint(dst).expect("validated");
                Hop { sock, dst, dst_len }
            };
            let route = Route {
                forwarding: e.forwarding(),
                client: e.client,
                exit: e.exit,
                to_exit: hop(local(&e.gw_exit), &e.exit),
                to_client: hop(local(&e.gw_client), &e.client),
            };
            routes.insert(id, route);
        }
        Ok(Self { locals, routes })
    }
}

/// Family, address and port; the padding bytes do not count.
#[inline]
fn same(a: &Endpoint, b: &Endpoint) -> bool {
    a.family == b.family && a.port_be == b.port_be && a.addr == b.addr
}

pub enum Reason {
    Malformed,
    Control,
    UnknownSession,
    NotForwarding,
    StaleBinding,
}

/// Step 4 of the XDP relay, on one received datagram (`None`: it overflowed its slot).
#[inline]
pub fn steer<'t>(
    table: &'t Table,
    payload: Option<&[u8]>,
    src: &SockAddr,
) -> Result<&'t Hop, Reason> {
    let (header, kind) =
        WireHeader::parse(payload.ok_or(Reason::Malformed)?).map_err(|_| Reason::Malformed)?;
    if kind != Kind::Data {
        return Err(Reason::Control);
    }
    let route = table
        .routes
        .get(&header.session_id())
        .ok_or(Reason::UnknownSession)?;
    if !route.forwarding {
        return Err(Reason::NotForwarding);
    }
    let from = src.endpoint();
    if same(&from, &route.client) {
        Ok(&route.to_exit)
    } else if same(&from, &route.exit) {
        Ok(&route.to_client)
    } else {
        Err(Reason::StaleBinding)
    }
}
