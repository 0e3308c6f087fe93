//! The benchmark's XDP object, apart from the product (`jvpn`): the traffic generator
//! `jvpn_pktgen`, the counting sink `xdp_sink`, the path ceilings `bench_drop` and
//! `bench_fwd`, and `xdp_pass`, which labs put on the peers of veths the relay
//! redirects into (docs/bench.md). A gateway never loads it.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod bench;
#[cfg(target_arch = "bpf")]
#[allow(dead_code)] // the relay's writable views are not used here
mod ctx;

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!("jvpn-bench-xdp is an eBPF object: build it with `cargo xtask build`");
}

#[cfg(all(target_arch = "bpf", not(test)))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable loop, so a panic path that survives
    // optimisation fails the load instead of hanging a CPU.
    loop {}
}
