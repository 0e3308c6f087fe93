//! Session policy (DESIGN §4), the `[policy]` table of the gateway configuration.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// Longest a session may stay out of ATTACHED before it is TERMINATED.
    pub max_recovery_window_ms: u64,
    /// Successful switches allowed in any sliding window of `switch_window_ms`
    /// (60 s by default, hence the name).
    pub max_switches_per_minute: u32,
    /// The window `max_switches_per_minute` counts over.
    pub switch_window_ms: u64,
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
    /// Refused (docs/gateway.md, "Quality is the client's to judge"): the gateway
    /// never measured loss, RTT or jitter, so these thresholds guarded nothing.
    #[serde(rename = "max_loss_pct", skip_serializing)]
    pub retired_max_loss_pct: Option<Retired>,
    #[serde(rename = "max_rtt_ms", skip_serializing)]
    pub retired_max_rtt_ms: Option<Retired>,
    #[serde(rename = "max_jitter_ms", skip_serializing)]
    pub retired_max_jitter_ms: Option<Retired>,
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
            switch_window_ms: 60_000,
            transport_loss_ttl_ms: 3_000,
            idle_after_ms: 5_000,
            idle_loss_ttl_ms: 45_000,
            candidate_ttl_ms: 2_000,
            session_ttl_s: 86_400,
            freshness_window_ms: 30_000,
            keepalive_interval_ms: 1_000,
            handshake_timeout_ms: 5_000,
            retired_max_loss_pct: None,
            retired_max_rtt_ms: None,
            retired_max_jitter_ms: None,
            blacklist: Vec::new(),
            auto_blacklist_after: 5,
            auto_blacklist_s: 60,
        }
    }
}

/// A key the gateway no longer reads. Never deserializes: a configuration naming
/// one is refused with why, rather than taken as a safeguard that does nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retired;

impl<'de> Deserialize<'de> for Retired {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom(
            "no longer a gateway setting: the gateway judges a binding by its silence \
             (transport_loss_ttl_ms, idle_loss_ttl_ms); loss, RTT and jitter are judged by \
             the client agent ([health] in its configuration). Remove the key",
        ))
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
        let positive: [(&'static str, u64); 11] = [
            ("max_recovery_window_ms", self.max_recovery_window_ms),
            (
                "max_switches_per_minute",
                self.max_switches_per_minute.into(),
            ),
            ("switch_window_ms", self.switch_window_ms),
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
        if self.switch_window_ms > 86_400_000 {
            return err("switch_window_ms", "must be at most 86400000 (a day)");
        }
        if self.session_ttl_s > u64::MAX / 1000 {
            return err("session_ttl_s", "too large");
        }
        Ok(())
    }
}
