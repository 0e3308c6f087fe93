//! The deterministic simulation: the client core, the gateway core (over the
//! in-memory data plane, [`crate::datapath::MemPlane`], which also stands in for
//! the XDP relay) and the exit engine, wired through a simulated network
//! ([`net::Net`]) in virtual time, every random choice from one seeded RNG — the
//! network's faults and the gateway's ids and challenges alike. The same seed gives
//! the same run; a failing scenario prints its seed (`JVPN_SIM_SEED` replays it).
//!
//! The namespace tests (`tests/tests/agent_e2e.rs` and the rest) prove the wiring of
//! these cores to sockets, XDP and the TUN; these scenarios run the same protocol
//! in milliseconds, under faults a real network would take minutes to show, with
//! the invariants of docs/protocol.md checked after every datagram.

pub mod net;
pub mod packet;
mod world;

#[cfg(test)]
mod tests;

pub use world::{CLIENT_BINDS, GW_ADDRS, TRANSPORTS, World, WorldConfig};
