//! Reasons the relay did not forward a packet: indices of the per-CPU `DROPS` array.
//!
//! What happened to the packet is its reason's [`fate`]: most reasons are drops;
//! [`NEIGH_UNRESOLVED`] and [`FRAGMENT_PASSED`] hand the packet, unmodified, to the
//! kernel (`XDP_PASS`) and count it here so that an operator sees every packet the fast
//! path did not relay; [`HELLO_COOKIE_SENT`] is a HELLO **answered** in XDP with a
//! COOKIE (`XDP_TX`), nothing lost; [`COOKIE_INVALID`] says why some of those were
//! answered (each is counted under [`HELLO_COOKIE_SENT`] as well); [`NEXT_HOP_FIB`]
//! counts DATA that was relayed, but by the slow path.

pub const MALFORMED: u32 = 0;
pub const BAD_VERSION: u32 = 1;
pub const UNKNOWN_TYPE: u32 = 2;
pub const BAD_SESSION_ID: u32 = 3;
pub const UNKNOWN_SESSION: u32 = 4;
pub const NOT_FORWARDING: u32 = 5;
pub const STALE_BINDING: u32 = 6;
pub const FRAGMENT: u32 = 7;
pub const FIB_FAILURE: u32 = 8;
pub const MTU_EXCEEDED: u32 = 9;
pub const NO_UDP_CHECKSUM: u32 = 10;
pub const ADJUST_HEAD_FAILED: u32 = 11;
pub const NEIGH_UNRESOLVED: u32 = 12;
pub const FRAGMENT_PASSED: u32 = 13;
/// A HELLO over the global budget toward the controller.
pub const HELLO_BUDGET: u32 = 14;
/// Under load: a HELLO with a valid cookie over its source prefix's budget.
pub const HELLO_SOURCE_LIMITED: u32 = 15;
/// Under load: a HELLO whose cookie is invalid (also counted as [`HELLO_COOKIE_SENT`]).
pub const COOKIE_INVALID: u32 = 16;
/// Under load: a HELLO without a valid cookie, answered with a COOKIE by `XDP_TX`.
pub const HELLO_COOKIE_SENT: u32 = 17;
/// Under load: a HELLO that needs a COOKIE but carries IPv4 options (not answered).
pub const HELLO_IP_OPTIONS: u32 = 18;
/// A control message of a known session over its budget.
pub const CONTROL_LIMITED: u32 = 19;
/// A COOKIE or TIME (a gateway's own replies) arriving at the gateway.
pub const UNEXPECTED_REPLY: u32 = 20;
/// DATA **relayed** by the slow path: its session had no valid `NEXT_HOPS` entry
/// (none assigned, invalidated by a network change, or caught mid-update), so the
/// relay asked the kernel's FIB. Not a loss.
pub const NEXT_HOP_FIB: u32 = 21;
/// DATA **relayed** after a `SESSIONS` lookup: its slot held no valid copy of the
/// session's entry (`crate::hot`: the id names another session's slot, the session
/// has no copy, or the copy was caught mid-update). Not a loss.
pub const SESSION_LOOKUP: u32 = 22;

/// Number of reasons.
pub const COUNT: u32 = 23;

/// Slots of the `DROPS` map: room for reasons to come, so that a later build finds
/// the pinned map the right size and keeps its counts.
pub const SLOTS: u32 = 32;
const _: () = assert!(COUNT <= SLOTS);

/// Stable names, used in `jvpn-ctl stats`, metrics and docs.
pub const NAMES: [&str; COUNT as usize] = [
    "malformed",
    "bad_version",
    "unknown_type",
    "bad_session_id",
    "unknown_session",
    "not_forwarding",
    "stale_binding",
    "fragment",
    "fib_failure",
    "mtu_exceeded",
    "no_udp_checksum",
    "adjust_head_failed",
    "neigh_unresolved",
    "fragment_passed",
    "hello_budget",
    "hello_source_limited",
    "cookie_invalid",
    "hello_cookie_sent",
    "hello_ip_options",
    "control_limited",
    "unexpected_reply",
    "next_hop_fib",
    "session_lookup",
];

/// What became of a packet counted under a reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Dropped.
    Dropped,
    /// Handed to the kernel untouched (`XDP_PASS`).
    Passed,
    /// Answered by the XDP program itself (`XDP_TX` of a reply built in its place).
    Answered,
    /// Relayed after all, by a slower way (counted to show how often).
    Relayed,
}

pub const fn fate(reason: u32) -> Fate {
    match reason {
        NEIGH_UNRESOLVED | FRAGMENT_PASSED => Fate::Passed,
        HELLO_COOKIE_SENT | COOKIE_INVALID => Fate::Answered,
        NEXT_HOP_FIB | SESSION_LOOKUP => Fate::Relayed,
        _ => Fate::Dropped,
    }
}

/// True for reasons that hand the packet to the kernel instead of dropping it.
pub const fn is_pass(reason: u32) -> bool {
    matches!(fate(reason), Fate::Passed)
}

/// True for reasons whose packets were answered in XDP rather than lost.
pub const fn is_answer(reason: u32) -> bool {
    matches!(fate(reason), Fate::Answered)
}

pub const fn name(reason: u32) -> &'static str {
    if reason < COUNT {
        NAMES[reason as usize]
    } else {
        "unknown"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_fates_as_documented() {
        for (i, a) in NAMES.iter().enumerate() {
            assert_eq!(name(i as u32), *a);
            assert!(NAMES[..i].iter().all(|b| b != a), "{a} twice");
        }
        assert_eq!(name(COUNT), "unknown");
        let not_dropped: [u32; 6] = [
            NEIGH_UNRESOLVED,
            FRAGMENT_PASSED,
            HELLO_COOKIE_SENT,
            COOKIE_INVALID,
            NEXT_HOP_FIB,
            SESSION_LOOKUP,
        ];
        for r in 0..COUNT {
            assert_eq!(
                fate(r) == Fate::Dropped,
                !not_dropped.contains(&r),
                "{}",
                name(r)
            );
        }
        assert!(is_answer(HELLO_COOKIE_SENT) && !is_pass(HELLO_COOKIE_SENT));
        assert!(is_pass(NEIGH_UNRESOLVED) && !is_answer(NEIGH_UNRESOLVED));
        assert!(fate(NEXT_HOP_FIB) == Fate::Relayed && !is_pass(NEXT_HOP_FIB));
    }
}
