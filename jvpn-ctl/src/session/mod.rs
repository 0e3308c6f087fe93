//! The session state machine (DESIGN §4, docs/protocol.md): a pure function
//! `(session, event, policy, now) → (session', actions, reason)`.
//!
//! No clock, no randomness, no I/O: the controller passes time in, does the crypto and
//! the global checks before building an [`Event`], and carries out the [`Action`]s.

mod machine;
mod policy;
mod types;

#[cfg(test)]
mod model;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use machine::{next_deadline, step};
pub use policy::{Policy, PolicyError};
pub use types::{Action, Candidate, Detail, Event, Notice, Reason, Request, Session, State, Step};
