//! Helpers for tests that need the real kernel: root checks, network namespaces and
//! veth pairs that clean up after themselves, frames built by an independent
//! implementation (etherparse), and a `BPF_PROG_TEST_RUN` wrapper.

pub mod bench;
pub mod frames;
pub mod packet_lab;
pub mod pktgen_lab;
pub mod testrun;
pub mod tmpfs;
pub mod uspace_relay;

pub use jvpn_ctl::lab::{netns, unique};

/// True when the process may create namespaces and load BPF. Tests that need it call
/// [`require_root!`], which reports the skip on stderr (visible with `--nocapture`
/// and in `cargo xtask test`'s summary) instead of silently passing.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::is_root() {
            eprintln!(
                "SKIPPED {}: needs root (BPF and network namespaces); run `cargo xtask test` as root",
                module_path!()
            );
            println!("SKIPPED: needs root");
            return;
        }
    };
}

pub mod agent;
pub mod cluster;
pub mod gwlab;
pub mod tclient;
