//! All-traffic mode: `routes = ["0.0.0.0/0", "::/0"]` sends everything through the
//! tunnel without sending the agent's own packets to its gateways there too. As
//! `wg-quick` does it: the default route goes into a table of its own ([`TABLE`]),
//! and two policy rules per family choose it —
//!
//! ```text
//! 27253: from all lookup main suppress_prefixlength 0   (main's specific routes, not its default)
//! 27254: not from all fwmark 0x6a76 lookup 27254        (everything unmarked: the tunnel)
//! ```
//!
//! — while every socket of the agent towards its gateways carries the mark
//! ([`FWMARK`], `sockopt::set_agent_mark`), so its packets skip rule 27254 and leave
//! by the main table as before. Undone on exit (the rules deleted, the TUN with its
//! routes goes with the process). After a crash the rules remain but are harmless:
//! the kernel deletes the TUN's routes with the TUN, so table 27254 is empty, a lookup
//! falls through to main, and traffic takes its usual way; the next start deletes
//! them before it adds its own.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt as _;
use netlink_packet_route::{
    AddressFamily,
    route::RouteScope,
    rule::{RuleAction, RuleAttribute, RuleFlags, RuleMessage},
};
use rtnetlink::{IpVersion, RouteMessageBuilder};

use crate::tun::TunError;

/// The mark of the agent's sockets ("jv").
pub const FWMARK: u32 = 0x6a76;
/// The routing table of the tunnel's default routes.
pub const TABLE: u32 = 0x6a76;
const PREF_SUPPRESS: u32 = TABLE - 1;
const PREF_TUNNEL: u32 = TABLE;

fn err(what: &'static str, error: rtnetlink::Error) -> TunError {
    TunError::Netlink {
        what,
        name: format!("table {TABLE}"),
        error,
    }
}

/// Deletes this run's rules when the agent stops (an error or a normal exit; after a
/// crash they are harmless, see above). On a thread of its own: a drop cannot await.
pub struct Guard;

impl Drop for Guard {
    fn drop(&mut self) {
        let done = std::thread::spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(crate::tun::with_netlink(
                |h| async move { remove(&h).await },
            ))
            .map_err(|e| e.to_string())
        })
        .join();
        match done {
            Ok(Ok(n)) => tracing::info!("all-traffic mode undone ({n} policy rules removed)"),
            Ok(Err(e)) => tracing::warn!("undoing all-traffic mode: {e}"),
            Err(_) => tracing::warn!("undoing all-traffic mode: the thread panicked"),
        }
    }
}

/// Is `m` one of ours (by priority, which the agent alone uses)?
fn ours(m: &RuleMessage) -> bool {
    m.attributes.iter().any(
        |a| matches!(a, RuleAttribute::Priority(p) if *p == PREF_SUPPRESS || *p == PREF_TUNNEL),
    )
}

/// Deletes every rule of ours (of both families): the leftovers of a crash, or this
/// run's at exit. Returns how many.
pub async fn remove(h: &rtnetlink::Handle) -> Result<usize, TunError> {
    let mut n = 0;
    for v in [IpVersion::V4, IpVersion::V6] {
        let rules: Vec<RuleMessage> = h
            .rule()
            .get(v)
            .execute()
            .try_collect()
            .await
            .map_err(|e| err("listing the policy rules", e))?;
        for r in rules.into_iter().filter(ours) {
            h.rule()
                .del(r)
                .execute()
                .await
                .map_err(|e| err("deleting a policy rule", e))?;
            n += 1;
        }
    }
    Ok(n)
}

/// Routes the families asked for (`v4`, `v6`) through TUN `index` by the rules above.
/// Leftover rules are deleted first, so a start after a crash does not double them.
pub async fn install(
    h: &rtnetlink::Handle,
    index: u32,
    v4: bool,
    v6: bool,
) -> Result<(), TunError> {
    let left = remove(h).await?;
    if left > 0 {
        tracing::warn!("removed {left} policy rules a previous agent left (it crashed?)");
    }
    for (on, any) in [
        (v4, IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        (v6, IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
    ] {
        if !on {
            continue;
        }
        let route = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(any, 0)
            .map_err(|_| TunError::BadPrefix {
                name: format!("table {TABLE}"),
                dest: any,
                prefix_len: 0,
            })?
            .output_interface(index)
            .scope(RouteScope::Link)
            .table_id(TABLE)
            .build();
        h.route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(|e| err("adding the tunnel's default route to", e))?;
        for (pref, table) in [(PREF_SUPPRESS, 254u32), (PREF_TUNNEL, TABLE)] {
            let mut add = h
                .rule()
                .add()
                .table_id(table)
                .priority(pref)
                .action(RuleAction::ToTable)
                .v4()
                .replace();
            let m = add.message_mut();
            // One builder for both families: v4() and v6() differ only in this.
            if any.is_ipv6() {
                m.header.family = AddressFamily::Inet6;
            }
            if pref == PREF_SUPPRESS {
                m.attributes.push(RuleAttribute::SuppressPrefixLen(0));
            } else {
                m.attributes.push(RuleAttribute::FwMark(FWMARK));
                m.header.flags |= RuleFlags::Invert;
            }
            add.execute()
                .await
                .map_err(|e| err("adding a policy rule for", e))?;
        }
    }
    Ok(())
}
