//! Jumping VPN userspace: the data-plane loader and map owner ([`datapath`]), the
//! protocol ([`proto`]), the session state machine ([`session`]), the gateway
//! controller ([`gateway`]), the exit ([`exit`]), the client agent ([`client`]), the
//! control API ([`control`]) and the namespace labs ([`lab`]).

pub mod bench;
pub mod client;
pub mod clock;
pub mod cluster;
pub mod control;
pub mod datapath;
pub mod exit;
pub mod gateway;
pub mod icmp;
pub mod inner;
pub mod lab;
pub mod prefix;
pub mod proto;
pub mod session;
pub mod sim;
pub mod sockopt;
pub mod splitmix;
pub mod store;
pub mod toml_file;
pub mod tun;
pub mod udp_batch;
