//! The gateway's control plane towards operators (DESIGN §4, §6):
//!
//! * [`api`]: the newline-delimited JSON protocol of the control socket;
//! * [`server`]: the control socket of the gateway ([`server::serve`]); requests go
//!   to the gateway core as [`server::Call`]s, event requests are answered from the
//!   [`events::EventBus`];
//! * [`client`]: the blocking client `jvpn-ctl` uses;
//! * [`events`]: the event bus (never blocks the emitter) and the JSON-lines event log;
//! * [`metrics`]: the Prometheus text endpoint.

use std::{io, net::SocketAddr, path::PathBuf};

pub mod api;
pub mod client;
pub mod events;
pub mod metrics;
pub mod server;

pub use api::{EventRecord, Request, Response, SessionId, SessionInfo, Stats};
pub use client::Client;
pub use events::{EventBus, FileSink, spawn_file_sink};
pub use server::{Call, ControlServer, serve};

/// Default path of the control socket.
pub const DEFAULT_SOCKET: &str = "/run/jvpn/jvpn.sock";

/// Errors of the control socket, its client, the event log and the metrics endpoint.
/// Every message names the path or address involved and includes its cause, so the
/// I/O causes are deliberately not `source()`s (`{:#}` would print them twice).
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("another gateway is listening on {}", .0.display())]
    AlreadyRunning(PathBuf),
    #[error("{} exists and is not a socket; refusing to replace it", .0.display())]
    NotASocket(PathBuf),
    #[error("gateway not running (no control socket at {})", .0.display())]
    NotRunning(PathBuf),
    #[error("gateway not running (nothing listening on {})", .0.display())]
    Refused(PathBuf),
    #[error("cannot connect to {}: {cause}", path.display())]
    Connect { path: PathBuf, cause: io::Error },
    /// Some other I/O failure; `what` says what was being done, naming the path.
    #[error("{what}: {cause}")]
    Io { what: String, cause: io::Error },
    #[error("cannot bind metrics endpoint {addr}: {cause}")]
    Bind { addr: SocketAddr, cause: io::Error },
    /// The gateway answered `{"ok":false,"error":...}`.
    #[error("{0}")]
    Remote(String),
    /// The peer sent something that is not the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The gateway closed the connection.
    #[error("the gateway closed the connection")]
    Closed,
    #[error("{0}")]
    Other(String),
}

impl ControlError {
    pub(crate) fn io(what: impl Into<String>, cause: io::Error) -> Self {
        ControlError::Io {
            what: what.into(),
            cause,
        }
    }
}
