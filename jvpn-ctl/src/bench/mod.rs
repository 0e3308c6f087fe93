//! Benchmark tools (docs/bench.md): the traffic generator behind `jvpn-ctl pktgen`
//! ([`pktgen`], with its frame builder [`frame`]) and the counting sink behind
//! `jvpn-ctl sink` ([`sink`]), and the trivial forwarder the benchmark uses as a path
//! ceiling ([`attached`]). All are programs of the jvpn XDP object.

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

/// A loader for the jvpn object as the benchmark tools use it: nothing pinned, and the
/// relay's maps, which come with the object but stay unused here, get one entry.
fn loader<'a>() -> EbpfLoader<'a> {
    let mut loader = EbpfLoader::new();
    loader
        .map_max_entries("SESSIONS", 1)
        .map_max_entries("SESSION_STATS", 1);
    loader
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
    let mut ebpf = loader
        .load(crate::datapath::EBPF_OBJECT)
        .map_err(DatapathError::Load)?;
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
