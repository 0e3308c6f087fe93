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
/// and in `cargo xtask test`'s summary) instead of silently passing, and under
/// `CI=true` (run as root) fails: a root test that did not run there is not a pass.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::is_root() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{}: needs root (BPF and network namespaces), and CI=true: run `cargo xtask test` as root",
                module_path!()
            );
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

/// Processes a data plane's next-hop notifications until `done` holds. The kernel
/// queues them before the `ip` command that caused them returns; the 5 s deadline
/// only guards against a slow one.
pub fn settle_next_hops(
    dp: &mut jvpn_ctl::datapath::Datapath,
    what: &str,
    done: impl Fn(&jvpn_ctl::datapath::Datapath) -> bool,
) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        dp.process_next_hop_events().unwrap();
        if done(dp) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not processed within 5 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}
