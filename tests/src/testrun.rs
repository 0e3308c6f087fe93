//! `BPF_PROG_TEST_RUN` on a loaded XDP program.

use aya::programs::{TestRun as _, TestRunOptions, Xdp};

/// Result of one run: the XDP action and the frame as the program left it.
#[derive(Debug)]
pub struct Run {
    pub action: u32,
    pub out: Vec<u8>,
}

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// `struct xdp_md` as `ctx_in`: lets the run see a real ingress interface (whose
/// namespace's FIB the relay consults) instead of the default loopback.
fn xdp_md(len: usize, ingress_ifindex: u32) -> [u8; 24] {
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(len as u32).to_ne_bytes()); // data_end
    ctx[12..16].copy_from_slice(&ingress_ifindex.to_ne_bytes());
    ctx
}

pub fn run(prog: &Xdp, frame: &[u8], ingress_ifindex: u32) -> Run {
    try_run(prog, frame, ingress_ifindex).expect("BPF_PROG_TEST_RUN")
}

/// Like [`run`], but returns the kernel's refusal (e.g. EINVAL for frames shorter than
/// an Ethernet header, which no driver delivers to XDP).
pub fn try_run(
    prog: &Xdp,
    frame: &[u8],
    ingress_ifindex: u32,
) -> Result<Run, aya::programs::ProgramError> {
    let ctx = xdp_md(frame.len(), ingress_ifindex);
    let mut out = vec![0u8; frame.len() + 256];
    let res = prog.test_run(TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ctx_in: Some(&ctx),
        ..TestRunOptions::new()
    })?;
    out.truncate(res.data_size_out as usize);
    Ok(Run {
        action: res.return_value,
        out,
    })
}

/// Average ns per run over `repeat` runs of the same frame (kernel-timed).
pub fn ns_per_run(prog: &Xdp, frame: &[u8], ingress_ifindex: u32, repeat: u32) -> f64 {
    let ctx = xdp_md(frame.len(), ingress_ifindex);
    let res = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&ctx),
            repeat,
            ..TestRunOptions::new()
        })
        .expect("BPF_PROG_TEST_RUN repeat");
    res.duration.as_nanos() as f64
}
