//! Early, named privilege errors instead of a bare EPERM from the bpf() syscall.

use super::DatapathError;

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// Loading and attaching XDP needs CAP_BPF (or CAP_SYS_ADMIN) and CAP_NET_ADMIN.
pub fn check() -> Result<(), DatapathError> {
    let Some(caps) = effective_caps() else {
        // Cannot tell (no procfs): let the kernel decide.
        return Ok(());
    };
    let has = |c: u32| caps & (1u64 << c) != 0;
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        return Err(DatapathError::NoPrivilege { missing: "CAP_BPF" });
    }
    if !has(CAP_NET_ADMIN) {
        return Err(DatapathError::NoPrivilege {
            missing: "CAP_NET_ADMIN",
        });
    }
    Ok(())
}
