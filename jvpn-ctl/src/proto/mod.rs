//! The Jumping VPN protocol (docs/protocol.md): message encodings and their crypto.
//!
//! Kept free of sockets, clocks and session state so the gateway controller, the exit,
//! the client agent and the tests all build and check messages the same way; callers
//! pass time and randomness in and decide what a verified message means.

pub mod control;
pub mod ctl_window;
pub mod data;
mod error;
mod fields;
pub(crate) mod files;
#[cfg(test)]
mod fuzz;
pub mod handshake;
pub mod identity;
mod keys;
pub mod link;
pub mod reply;

pub use control::{Body, Control, ReattachCause, ReattachRequest, Unverified};
pub use ctl_window::CtlWindow;
pub use data::{DataKey, ReplayWindow};
pub use error::ProtoError;
pub use fields::{ADDR_LEN, HINT_LEN, Hint, TransportKind};
pub use handshake::{
    ClientHandshake, ClientSession, Confirm, Established, Hello, VerifiedHello, Welcome, Welcomed,
};
pub use identity::{Peer, Peers};
pub use keys::SessionKeys;
pub use link::{Dir, LinkCrypto, LinkMsg, load_link_key};
pub use reply::{Cookie, Time};
