//! Jumping VPN userspace: the data-plane loader and map owner ([`datapath`]); the
//! controller, exit and client agent build on it.

pub mod datapath;
pub mod lab;
