//! Single-machine labs built from network namespaces and veth pairs (DESIGN §8): used
//! by `jvpn-ctl demo` and by the tests. Every name is unique per process and call, and
//! every guard removes what it created when dropped.

pub mod capture;
pub mod cluster;
pub mod cluster_scenario;
pub mod cluster_stack;
pub mod etcd;
pub mod etcd_view;
pub mod exit_thread;
pub mod gateway;
pub mod netns;
pub mod scenario;
pub mod stack;
pub mod traffic;

use std::sync::atomic::{AtomicU32, Ordering};

/// A name no other lab in this process, or a concurrent process, uses: prefix, pid,
/// counter. Kept short: interface names are limited to 15 bytes.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{:x}{n}", std::process::id() % 0xfffff)
}
