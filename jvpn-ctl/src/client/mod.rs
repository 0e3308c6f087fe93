//! The client agent (`jvpn-ctl client`): establishes a session, carries the tunnel
//! (TUN + ChaCha20-Poly1305), watches the health of every transport and moves the
//! session to another one through an authenticated reattach when the bound one dies.
//! See `docs/client.md`.

pub mod config;
pub mod core;
pub mod fullroute;
pub mod health;
pub mod netwatch;
pub mod pmtu;
pub mod run;
pub mod status;
mod transports;

pub use config::{ClientConfig, ConfigError, HealthConfig, Kind, TransportConfig};
pub use run::{ClientError, run};
pub use status::{ClientStatus, HandshakeStatus, SwitchRecord, TransportStatus};
