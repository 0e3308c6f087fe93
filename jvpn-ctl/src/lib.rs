//! Jumping VPN userspace: the data-plane loader and map owner ([`datapath`]), the
//! protocol ([`proto`]), the session state machine ([`session`]), the gateway
//! controller ([`gateway`]), the exit ([`exit`]) and the control API ([`control`]).

pub mod bench;
pub mod control;
pub mod datapath;
pub mod exit;
pub mod gateway;
pub mod lab;
pub mod proto;
pub mod session;
pub mod toml_file;
pub mod tun;
