//! The gateway controller (`jvpn-ctl gateway`): handshake, session state, reattach
//! validation and the atomic binding swap, events, control API and metrics.
//!
//! [`core::Core`] holds every session and handles one input at a time; [`run`] is the
//! I/O shell around it.

pub mod aggregate;
mod calls;
pub mod cluster;
pub mod config;
pub mod core;
mod counters;
mod entropy;
mod guard;
mod handshake;
mod link;
pub mod lock;
pub mod net;
mod persist;
mod pool;
mod reattach;
pub mod record;
pub mod reload;
mod rollback;
mod run;
mod timers;

pub use config::{ConfigError, GatewayConfig};
pub use persist::{Commit, Resumed};
pub use pool::Pool;
pub use rollback::RolledBack;
pub use run::{GatewayError, Reloader, load_records, run};
