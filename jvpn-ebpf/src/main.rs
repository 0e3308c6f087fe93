//! The jvpn XDP data plane: steers DATA packets by SessionID between a session's
//! current client binding and its exit, rewriting only outer headers (DESIGN §5,
//! docs/datapath.md). It never decrypts and never writes a map the controller owns.
//! The benchmark's programs are another object (`bench_main.rs`): a gateway loads
//! only these.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// Inline assembly for the BPF atomic add (`relay::add`): core has no 64-bit atomic
// read-modify-write for this target.
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

#[cfg(target_arch = "bpf")]
mod ctx;
#[cfg(target_arch = "bpf")]
mod hello;
#[cfg(target_arch = "bpf")]
mod relay;

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!("jvpn-ebpf is an eBPF object: build it with `cargo xtask build`");
}

#[cfg(all(target_arch = "bpf", not(test)))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable loop, so a panic path that survives
    // optimisation fails the load instead of hanging a CPU.
    loop {}
}
