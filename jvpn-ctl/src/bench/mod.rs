//! Benchmark tools (docs/bench.md): the traffic generator behind `jvpn-ctl pktgen`
//! ([`pktgen`], with its frame builder [`frame`]) and the counting sink behind
//! `jvpn-ctl sink` ([`sink`]), and the trivial forwarder the benchmark uses as a path
//! ceiling ([`attached`]). All are programs of the benchmark's own XDP object,
//! [`BENCH_OBJECT`]: the product object (`datapath::EBPF_OBJECT`) holds only the relay.

pub mod attached;
pub mod cpus;
mod error;
pub mod frame;
pub mod netif;
pub mod pktgen;
pub mod sink;

use aya::{
    EbpfLoader,
    programs::{Xdp, XdpMode},
};
pub use error::BenchError;

use crate::datapath::{AttachMode, DatapathError, xdp_mut};

/// The benchmark's XDP object built by `build.rs` from `jvpn-ebpf` (`bench_main.rs`):
/// `jvpn_pktgen`, `xdp_sink`, `bench_drop`, `bench_fwd`, `xdp_pass` and their maps.
pub static BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/jvpn-bench-xdp"));

/// A loader for the benchmark object: nothing pinned.
fn loader<'a>() -> EbpfLoader<'a> {
    EbpfLoader::new()
}

/// Loads the object with `loader`, loads `program` and attaches it to `iface` (in the
/// calling thread's namespace); it stays attached until the returned object is dropped.
fn load_attached(
    loader: &mut EbpfLoader<'_>,
    program: &'static str,
    iface: &str,
    mode: AttachMode,
) -> Result<aya::Ebpf, BenchError> {
    netif::ifindex(iface)?;
    crate::datapath::check_privilege()?;
    let mut ebpf = loader.load(BENCH_OBJECT).map_err(DatapathError::Load)?;
    let prog = xdp_mut(&mut ebpf, program)?;
    prog.load().map_err(|cause| DatapathError::Program {
        name: program,
        cause,
    })?;
    attach(prog, program, iface, mode)?;
    Ok(ebpf)
}

/// Attaches a loaded program to `iface` until the object is dropped.
fn attach(
    prog: &mut Xdp,
    name: &'static str,
    iface: &str,
    mode: AttachMode,
) -> Result<(), BenchError> {
    let xdp_mode = match mode {
        AttachMode::Native => XdpMode::Driver,
        AttachMode::Skb => XdpMode::Skb,
    };
    prog.attach(iface, xdp_mode).map_err(|cause| match cause {
        aya::programs::ProgramError::UnknownInterface { name } => BenchError::NoSuchInterface(name),
        cause => BenchError::Attach {
            program: name,
            iface: iface.to_string(),
            cause,
        },
    })?;
    Ok(())
}
