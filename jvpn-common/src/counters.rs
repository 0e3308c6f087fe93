//! Reasons the relay did not forward a packet: indices of the per-CPU `DROPS` array.
//!
//! Every reason is a drop except [`NEIGH_UNRESOLVED`] and [`FRAGMENT_PASSED`], which hand
//! the packet, unmodified, to the kernel (`XDP_PASS`) and count it here so that an
//! operator sees every packet the fast path did not relay.

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

/// Number of slots in `DROPS`.
pub const COUNT: u32 = 14;

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
];

/// True for reasons that hand the packet to the kernel instead of dropping it.
pub const fn is_pass(reason: u32) -> bool {
    reason == NEIGH_UNRESOLVED || reason == FRAGMENT_PASSED
}

pub const fn name(reason: u32) -> &'static str {
    if reason < COUNT {
        NAMES[reason as usize]
    } else {
        "unknown"
    }
}
