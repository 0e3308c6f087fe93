//! Attaching programs to interfaces, pinning their links, and the sysctls the FIB
//! lookup depends on.

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
};

use aya::{
    Ebpf,
    programs::{
        ProgramError, Xdp, XdpMode,
        links::{FdLink, Link as _, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
    },
};

use super::{DatapathError, pin};

/// How an XDP program runs on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// In the driver (fast); the default, falling back to `Skb` with a warning.
    Native,
    /// Generic XDP in the kernel stack (works everywhere, slower).
    Skb,
}

impl std::fmt::Display for AttachMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Native => "native",
            Self::Skb => "skb",
        })
    }
}

fn attach_err(iface: &str) -> impl FnOnce(ProgramError) -> DatapathError + '_ {
    move |cause| match cause {
        ProgramError::UnknownInterface { name } => DatapathError::NoSuchInterface(name),
        cause => DatapathError::Attach {
            iface: iface.to_string(),
            cause,
        },
    }
}

/// Attaches in `mode`; `Native` falls back to `Skb` with a warning. The link stays
/// owned by `prog` (detached when it drops) unless taken with `take_link`.
fn attach_link(
    prog: &mut Xdp,
    iface: &str,
    mode: AttachMode,
) -> Result<(XdpLinkId, AttachMode), DatapathError> {
    match mode {
        AttachMode::Native => match prog.attach(iface, XdpMode::Driver) {
            Ok(id) => Ok((id, AttachMode::Native)),
            Err(ProgramError::UnknownInterface { name }) => {
                return Err(DatapathError::NoSuchInterface(name));
            }
            Err(e) => {
                tracing::warn!(%iface, error = %e, "native XDP unavailable, falling back to SKB mode (slower)");
                prog.attach(iface, XdpMode::Skb)
                    .map(|id| (id, AttachMode::Skb))
            }
        },
        AttachMode::Skb => prog
            .attach(iface, XdpMode::Skb)
            .map(|id| (id, AttachMode::Skb)),
    }
    .map_err(attach_err(iface))
}

/// Attaches `prog` to `iface` and pins the link under `dir`. If a link from an earlier
/// run is pinned there, the new program is swapped into it atomically instead (no
/// packet sees the interface without a program).
pub fn attach(
    prog: &mut Xdp,
    dir: &Path,
    iface: &str,
    mode: AttachMode,
) -> Result<AttachMode, DatapathError> {
    ensure_forwarding(iface)?;
    let path = pin::link_path(dir, iface);
    if path.exists() {
        let pinned = PinnedLink::from_pin(&path).map_err(|e| DatapathError::Pin {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        let link = XdpLink::try_from(FdLink::from(pinned)).map_err(|e| DatapathError::Pin {
            path: path.clone(),
            detail: format!("not an XDP link: {e}"),
        })?;
        let id = prog.attach_to_link(link).map_err(attach_err(iface))?;
        // The pin keeps the link alive; our handle must not detach it on drop.
        let link = prog.take_link(id).map_err(attach_err(iface))?;
        std::mem::forget(link);
        tracing::info!(%iface, "replaced the program in the pinned XDP link");
        return Ok(mode);
    }
    let (id, used) = attach_link(prog, iface, mode)?;
    let link = prog.take_link(id).map_err(attach_err(iface))?;
    let fd_link = FdLink::try_from(link).map_err(|e| DatapathError::Pin {
        path: path.clone(),
        detail: format!("the kernel attached without a bpf_link, which cannot be pinned: {e}"),
    })?;
    fd_link.pin(&path).map_err(|e| DatapathError::Pin {
        path: path.clone(),
        detail: e.to_string(),
    })?;
    tracing::info!(%iface, mode = %used, "attached the jvpn relay");
    Ok(used)
}

/// Attaches without pinning; the link lives as long as the program's owner.
pub fn attach_unpinned(
    prog: &mut Xdp,
    iface: &str,
    mode: AttachMode,
) -> Result<AttachMode, DatapathError> {
    attach_link(prog, iface, mode).map(|(_, used)| used)
}

/// The index of `iface` in the current network namespace, or a named error.
pub fn interface_index(iface: &str) -> Result<u32, DatapathError> {
    nix::net::if_::if_nametoindex(iface).map_err(|_| DatapathError::NoSuchInterface(iface.into()))
}

/// Detaches the relay from `iface` by removing its pinned link.
pub fn detach(dir: &Path, iface: &str) -> Result<(), DatapathError> {
    let path = pin::link_path(dir, iface);
    if !path.exists() {
        return Err(DatapathError::NotAttached(iface.to_string()));
    }
    let pinned = PinnedLink::from_pin(&path).map_err(|e| DatapathError::Pin {
        path: path.clone(),
        detail: e.to_string(),
    })?;
    let link = pinned.unpin().map_err(|e| DatapathError::Pin {
        path: path.clone(),
        detail: e.to_string(),
    })?;
    link.detach().map_err(attach_err(iface))?;
    tracing::info!(%iface, "detached the jvpn relay");
    Ok(())
}

/// `bpf_fib_lookup` refuses to route packets that arrive on an interface with
/// forwarding off (it mirrors the kernel's forwarding path), so the relay needs
/// per-interface forwarding on for IPv4 and IPv6. Only the attached interface is
/// changed, and the change is logged.
fn ensure_forwarding(iface: &str) -> Result<(), DatapathError> {
    for fam in ["ipv4", "ipv6"] {
        let path = format!("/proc/sys/net/{fam}/conf/{iface}/forwarding");
        let cur = match std::fs::read_to_string(&path) {
            Ok(v) => v,
            // IPv6 disabled on this interface or host: nothing to enable.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && fam == "ipv6" => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(DatapathError::NoSuchInterface(iface.to_string()));
            }
            Err(cause) => return Err(DatapathError::Io { what: path, cause }),
        };
        if cur.trim() != "1" {
            std::fs::write(&path, "1").map_err(|cause| DatapathError::Io {
                what: path.clone(),
                cause,
            })?;
            tracing::info!(%iface, "enabled net.{fam}.conf.{iface}.forwarding (needed by the XDP FIB lookup)");
        }
    }
    Ok(())
}

/// Drains aya-log records (debug mode only) on a background thread.
pub struct LogPump {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl LogPump {
    pub fn start(ebpf: &mut Ebpf) -> Option<Self> {
        let mut logger = match aya_log::EbpfLogger::init(ebpf) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "XDP debug logging unavailable");
                return None;
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                let mut pfd = libc::pollfd {
                    fd: logger.as_fd().as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut pfd, 1, 200) };
                logger.flush();
            }
        });
        Some(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for LogPump {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
