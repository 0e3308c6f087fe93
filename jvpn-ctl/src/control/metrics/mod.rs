//! The Prometheus endpoint (`GET /metrics`): the figures of `jvpn-ctl stats` in the
//! text exposition format 0.0.4, encoded by `prometheus-client` (`families.rs`) from
//! the core's typed [`Stats`] — asked over a channel of its own, no JSON on the way
//! — and served over HTTP/1.1 by hyper (`http.rs`).

mod families;
mod http;

pub use http::{StatsAsk, serve, spawn};
use prometheus_client::{encoding::prometheus_text, registry::Registry};

use crate::control::api::Stats;

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Renders `stats` in the Prometheus text format 0.0.4.
pub fn render(stats: &Stats) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(families::Figures(stats.clone())));
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_text::encode(&mut out, &registry);
    out
}

#[cfg(test)]
mod tests;
