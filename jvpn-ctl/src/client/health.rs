//! Per-transport health from keepalives and traffic: RTT, jitter, loss and silence.
//!
//! Pure bookkeeping with time as an input. Every transport is probed with KEEPALIVE
//! (the gateway answers on any of the session's transports), so standby transports
//! have a measured health before the session ever needs them.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Probes kept for the loss estimate.
pub const WINDOW: usize = 10;

/// What a transport looks like now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Nothing heard yet (just started, or never answered).
    Unknown,
    Healthy,
    /// Answers, but over a loss / RTT / jitter threshold or silent for a while.
    Volatile,
    /// Silent for the loss TTL.
    Dead,
}

/// The thresholds in force (configuration plus the gateway's hints).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thresholds {
    pub max_loss_pct: u32,
    pub max_rtt_ms: u32,
    pub max_jitter_ms: u32,
    pub volatile_after_ms: u64,
    pub loss_ttl_ms: u64,
    /// A probe unanswered for this long counts as lost.
    pub probe_timeout_ms: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Health {
    /// Last authenticated packet received on this transport.
    last_rx_ms: Option<u64>,
    /// When probing started (silence is counted from here until something arrives).
    since_ms: u64,
    /// (sent at, answered) for the last [`WINDOW`] probes.
    probes: VecDeque<(u64, bool)>,
    srtt_ms: Option<f64>,
    jitter_ms: f64,
    /// Since when the status has been Healthy without interruption.
    healthy_since: Option<u64>,
}

impl Health {
    pub fn new(now_ms: u64) -> Self {
        Self {
            since_ms: now_ms,
            ..Self::default()
        }
    }

    /// Forget everything (e.g. after the interface came back): silence counts anew.
    pub fn reset(&mut self, now_ms: u64) {
        *self = Self::new(now_ms);
    }

    pub fn on_rx(&mut self, now_ms: u64) {
        self.last_rx_ms = Some(now_ms);
    }

    pub fn on_probe_sent(&mut self, ts_ms: u64) {
        if self.probes.len() == WINDOW {
            self.probes.pop_front();
        }
        self.probes.push_back((ts_ms, false));
    }

    /// A KEEPALIVE_ACK echoing `echo_ts_ms`; false if it matches no outstanding probe.
    pub fn on_probe_ack(&mut self, echo_ts_ms: u64, now_ms: u64) -> bool {
        let Some(p) = self
            .probes
            .iter_mut()
            .find(|(ts, acked)| *ts == echo_ts_ms && !*acked)
        else {
            return false;
        };
        p.1 = true;
        self.on_rx(now_ms);
        let rtt = now_ms.saturating_sub(echo_ts_ms) as f64;
        // RFC 6298 smoothing; the variance term is the jitter we report.
        match self.srtt_ms {
            None => {
                self.srtt_ms = Some(rtt);
                self.jitter_ms = rtt / 2.0;
            }
            Some(s) => {
                self.jitter_ms = 0.75 * self.jitter_ms + 0.25 * (s - rtt).abs();
                self.srtt_ms = Some(0.875 * s + 0.125 * rtt);
            }
        }
        true
    }

    pub fn rtt_ms(&self) -> Option<f64> {
        self.srtt_ms
    }

    pub fn jitter_ms(&self) -> f64 {
        self.jitter_ms
    }

    /// Share of the probes old enough to have been answered that were not.
    pub fn loss_pct(&self, now_ms: u64, t: &Thresholds) -> u32 {
        let due: Vec<bool> = self
            .probes
            .iter()
            .filter(|(ts, acked)| *acked || now_ms.saturating_sub(*ts) >= t.probe_timeout_ms)
            .map(|(_, acked)| *acked)
            .collect();
        if due.is_empty() {
            return 0;
        }
        let lost = due.iter().filter(|a| !**a).count();
        (lost * 100 / due.len()) as u32
    }

    pub fn silence_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.last_rx_ms.unwrap_or(self.since_ms))
    }

    pub fn status(&self, now_ms: u64, t: &Thresholds) -> Status {
        let silence = self.silence_ms(now_ms);
        if silence >= t.loss_ttl_ms {
            return Status::Dead;
        }
        if self.last_rx_ms.is_none() {
            return Status::Unknown;
        }
        let rtt = self.srtt_ms.unwrap_or(0.0);
        if silence >= t.volatile_after_ms
            || self.loss_pct(now_ms, t) > t.max_loss_pct
            || rtt > f64::from(t.max_rtt_ms)
            || self.jitter_ms > f64::from(t.max_jitter_ms)
        {
            return Status::Volatile;
        }
        Status::Healthy
    }

    /// Re-evaluates the status; returns it and how long it has been Healthy.
    pub fn evaluate(&mut self, now_ms: u64, t: &Thresholds) -> (Status, u64) {
        let s = self.status(now_ms, t);
        if s == Status::Healthy {
            let since = *self.healthy_since.get_or_insert(now_ms);
            (s, now_ms - since)
        } else {
            self.healthy_since = None;
            (s, 0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Thresholds = Thresholds {
        max_loss_pct: 20,
        max_rtt_ms: 100,
        max_jitter_ms: 50,
        volatile_after_ms: 400,
        loss_ttl_ms: 1_000,
        probe_timeout_ms: 200,
    };

    #[test]
    fn unknown_healthy_volatile_dead_by_silence() {
        let mut h = Health::new(0);
        assert_eq!(h.status(10, &T), Status::Unknown);
        h.on_probe_sent(10);
        assert!(h.on_probe_ack(10, 12));
        assert_eq!(h.status(12, &T), Status::Healthy);
        assert_eq!(h.status(12 + 399, &T), Status::Healthy);
        assert_eq!(h.status(12 + 400, &T), Status::Volatile);
        assert_eq!(h.status(12 + 999, &T), Status::Volatile);
        assert_eq!(h.status(12 + 1_000, &T), Status::Dead);
        // Never heard from: dead after the TTL counted from the start.
        assert_eq!(Health::new(5).status(1_005, &T), Status::Dead);
    }

    #[test]
    fn rtt_jitter_and_loss_cross_thresholds() {
        let mut h = Health::new(0);
        h.on_probe_sent(0);
        h.on_probe_ack(0, 150);
        assert_eq!(h.rtt_ms(), Some(150.0));
        assert_eq!(h.status(150, &T), Status::Volatile, "RTT over 100");

        let mut h = Health::new(0);
        for i in 0..10u64 {
            h.on_probe_sent(i * 10);
            if i < 7 {
                h.on_probe_ack(i * 10, i * 10 + 1);
            }
        }
        // 3 of 10 unanswered once they are older than the probe timeout.
        assert_eq!(h.loss_pct(100, &T), 0, "not yet due");
        assert_eq!(h.loss_pct(300, &T), 30);
        h.on_rx(300);
        assert_eq!(h.status(300, &T), Status::Volatile);
    }

    #[test]
    fn stray_ack_is_ignored_and_healthy_time_accumulates() {
        let mut h = Health::new(0);
        assert!(!h.on_probe_ack(42, 50));
        h.on_probe_sent(100);
        assert!(h.on_probe_ack(100, 101));
        assert!(!h.on_probe_ack(100, 102), "each probe answers once");
        assert_eq!(h.evaluate(101, &T), (Status::Healthy, 0));
        h.on_rx(300);
        assert_eq!(h.evaluate(300, &T), (Status::Healthy, 199));
        assert_eq!(h.evaluate(800, &T).0, Status::Volatile);
        h.on_rx(801);
        assert_eq!(
            h.evaluate(801, &T),
            (Status::Healthy, 0),
            "hold-down restarts"
        );
    }
}
