//! One program of the jvpn object attached to one interface for as long as the value
//! lives: the benchmark's path ceilings (`bench_drop`, and `bench_fwd`, the trivial
//! forwarder) and the `xdp_pass` that native redirects into a veth need on its peer.

use aya::Ebpf;

use super::{BenchError, netif};
use crate::datapath::AttachMode;

/// Redirects every frame, unmodified, out of another interface: the ceiling for any
/// forwarding XDP program on a path (the relay does the same redirect plus parsing,
/// session lookup, FIB lookup and rewrite).
pub const FWD_PROGRAM: &str = "bench_fwd";

pub struct Attached {
    _ebpf: Ebpf,
}

impl Attached {
    /// Loads `program` (e.g. `bench_drop`, `xdp_pass`) and attaches it to `iface` in the
    /// calling thread's namespace.
    pub fn program(
        program: &'static str,
        iface: &str,
        mode: AttachMode,
    ) -> Result<Self, BenchError> {
        Self::load(program, iface, mode, 0)
    }

    /// `bench_fwd` on `ingress`, redirecting to `egress`.
    pub fn forwarder(ingress: &str, egress: &str, mode: AttachMode) -> Result<Self, BenchError> {
        let out = netif::ifindex(egress)?;
        Self::load(FWD_PROGRAM, ingress, mode, out)
    }

    fn load(
        program: &'static str,
        iface: &str,
        mode: AttachMode,
        fwd_ifindex: u32,
    ) -> Result<Self, BenchError> {
        let mut loader = super::loader();
        loader.override_global("FWD_IFINDEX", &fwd_ifindex, true);
        let ebpf = super::load_attached(&mut loader, program, iface, mode)?;
        Ok(Self { _ebpf: ebpf })
    }
}
