//! The sessions the benchmark installs: session index `i` (id [`FIRST_ID`] + i) is a
//! client at the generator's address sending from port `CLIENT_PORT + (i & 255)` (the
//! generator's `src_ports`), relayed to the exit in the sink namespace.

use jvpn_common::maps::{Endpoint, FLAG_FORWARDING, SessionEntry};

use super::topo::{CLIENT_PORT, EXIT_PORT, GEN_IP, GW_IN_IP, GW_OUT_IP, GW_PORT, SINK_IP};

pub const FIRST_ID: u64 = 0x1000;
/// Distinct client source ports (a power of two): enough for `SO_REUSEPORT` to spread
/// the userspace relay's load over its sockets.
pub const SRC_PORTS: u16 = 256;

pub fn id(i: u64) -> u64 {
    FIRST_ID + i
}

pub fn entry(i: u64) -> SessionEntry {
    let port = CLIENT_PORT + (i as u16 & (SRC_PORTS - 1));
    SessionEntry {
        generation: 1,
        flags: FLAG_FORWARDING,
        client: Endpoint::v4(GEN_IP.octets(), port),
        gw_client: Endpoint::v4(GW_IN_IP.octets(), GW_PORT),
        exit: Endpoint::v4(SINK_IP.octets(), EXIT_PORT),
        gw_exit: Endpoint::v4(GW_OUT_IP.octets(), GW_PORT),
        ..Default::default()
    }
}
