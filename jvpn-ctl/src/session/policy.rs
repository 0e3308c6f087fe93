//! Session policy (DESIGN §4), the `[policy]` table of the gateway configuration.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Longest a session may stay out of ATTACHED before it is TERMINATED.
    pub max_recovery_window_ms: u64,
    /// Successful switches allowed in any sliding 60 s window.
    pub max_switches_per_minute: u32,
    /// Silence on the bound transport after which it is VOLATILE (gateway) / DEAD (client).
    pub transport_loss_ttl_ms: u64,
    /// No tunnel data for this long makes a session idle: its binding's silence is then
    /// judged against `idle_loss_ttl_ms` (idle clients keepalive every 15 s).
    pub idle_after_ms: u64,
    /// Silence on an idle session's binding after which it is VOLATILE.
    pub idle_loss_ttl_ms: u64,
    /// How long a reattach candidate has to answer its challenge.
    pub candidate_ttl_ms: u64,
    /// Absolute session lifetime.
    pub session_ttl_s: u64,
    /// Accepted clock difference for HELLO and REATTACH_REQUEST timestamps.
    pub freshness_window_ms: u64,
    pub keepalive_interval_ms: u64,
    /// BIRTH sessions whose CONFIRM has not arrived by then are TERMINATED.
    pub handshake_timeout_ms: u64,
    pub max_loss_pct: u32,
    pub max_rtt_ms: u32,
    pub max_jitter_ms: u32,
    /// Candidate transports that may never become a binding.
    pub blacklist: Vec<IpNet>,
    /// Invalid proofs from one source address before it is blacklisted for a while.
    pub auto_blacklist_after: u32,
    pub auto_blacklist_s: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            max_recovery_window_ms: 30_000,
            max_switches_per_minute: 10,
            transport_loss_ttl_ms: 3_000,
            idle_after_ms: 5_000,
            idle_loss_ttl_ms: 45_000,
            candidate_ttl_ms: 2_000,
            session_ttl_s: 86_400,
            freshness_window_ms: 30_000,
            keepalive_interval_ms: 1_000,
            handshake_timeout_ms: 5_000,
            max_loss_pct: 20,
            max_rtt_ms: 1_000,
            max_jitter_ms: 300,
            blacklist: Vec::new(),
            auto_blacklist_after: 5,
            auto_blacklist_s: 60,
        }
    }
}

/// A policy value that makes no sense.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("policy.{key}: {problem}")]
pub struct PolicyError {
    pub key: &'static str,
    pub problem: &'static str,
}

impl Policy {
    /// Rejects values the state machine cannot honour (zero windows, a loss TTL that
    /// outlasts the recovery window, ...).
    pub fn validate(&self) -> Result<(), PolicyError> {
        let err = |key, problem| Err(PolicyError { key, problem });
        let positive: [(&'static str, u64); 10] = [
            ("max_recovery_window_ms", self.max_recovery_window_ms),
            (
                "max_switches_per_minute",
                self.max_switches_per_minute.into(),
            ),
            ("transport_loss_ttl_ms", self.transport_loss_ttl_ms),
            ("idle_after_ms", self.idle_after_ms),
            ("idle_loss_ttl_ms", self.idle_loss_ttl_ms),
            ("candidate_ttl_ms", self.candidate_ttl_ms),
            ("session_ttl_s", self.session_ttl_s),
            ("freshness_window_ms", self.freshness_window_ms),
            ("keepalive_interval_ms", self.keepalive_interval_ms),
            ("handshake_timeout_ms", self.handshake_timeout_ms),
        ];
        for (key, v) in positive {
            if v == 0 {
                return err(key, "must be greater than 0");
            }
        }
        if self.keepalive_interval_ms >= self.transport_loss_ttl_ms {
            return err(
                "keepalive_interval_ms",
                "must be smaller than transport_loss_ttl_ms (a healthy idle link would look dead)",
            );
        }
        if self.transport_loss_ttl_ms > self.max_recovery_window_ms {
            return err(
                "transport_loss_ttl_ms",
                "must not exceed max_recovery_window_ms",
            );
        }
        if self.idle_loss_ttl_ms < self.transport_loss_ttl_ms {
            return err(
                "idle_loss_ttl_ms",
                "must be at least transport_loss_ttl_ms (an idle link is heard from less often)",
            );
        }
        if self.idle_loss_ttl_ms > 3_600_000 || self.idle_after_ms > 3_600_000 {
            return err(
                if self.idle_after_ms > 3_600_000 {
                    "idle_after_ms"
                } else {
                    "idle_loss_ttl_ms"
                },
                "must be at most 3600000 (an hour)",
            );
        }
        if self.candidate_ttl_ms > self.max_recovery_window_ms {
            return err("candidate_ttl_ms", "must not exceed max_recovery_window_ms");
        }
        if self.max_loss_pct > 100 {
            return err("max_loss_pct", "must be between 0 and 100");
        }
        if self.session_ttl_s > u64::MAX / 1000 {
            return err("session_ttl_s", "too large");
        }
        Ok(())
    }
}
