//! Types and logic shared by the XDP data plane (`jvpn-ebpf`) and userspace (`jvpn-ctl`).
//!
//! Everything here is `no_std`, allocation-free and verifier-friendly: the XDP program
//! parses and rewrites packets with the same functions the userspace tests run on byte
//! slices. Map keys and values are `#[repr(C)]` with explicit padding and compile-time
//! size checks, because the kernel copies them byte for byte between the two sides.
#![no_std]

pub mod bench;
pub mod bucket;
pub mod cookie;
pub mod counters;
pub mod csum;
pub mod frame;
pub mod headers;
pub mod hot;
pub mod maps;
pub mod nexthop;
pub mod relay;
pub mod siphash;
pub mod wire;

/// Default UDP port of the jvpn protocol on the gateway.
pub const DEFAULT_PORT: u16 = 51_820;

/// Default capacity of the `SESSIONS` map (set at load time).
pub const DEFAULT_MAX_SESSIONS: u32 = 1_048_576;
