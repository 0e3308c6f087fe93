//! Saying why nothing happens. A gateway answers nothing it refuses (an unknown key,
//! a HELLO for another gateway key, a stale one whose TIME was lost), so that a
//! scanner learns nothing; the agent is the one that must tell its operator. A
//! handshake unanswered for [`FIRST_REPORT_MS`] is reported at warn with what was
//! tried and the likely causes, then every [`REPORT_EVERY_MS`]; `client status`
//! shows the same. The gateway stays as silent as before.

use super::*;
use crate::client::status::HandshakeStatus;

/// Three HELLOs (one per second) without an answer: worth saying at once.
const FIRST_REPORT_MS: u64 = 3_000;
const REPORT_EVERY_MS: u64 = 30_000;

/// What one handshake has sent and heard.
pub(super) struct Silence {
    since_ms: u64,
    hellos: u32,
    /// Transports a HELLO went over, by index (bit `t`).
    tried: u64,
    /// TIMEs and COOKIEs that answered one of our HELLOs: the gateway is reachable
    /// and has our HELLOs' signatures checked, but sent no WELCOME.
    answers: u32,
    next_report_ms: u64,
}

/// Transport `t`'s bit in [`Silence::tried`] (none past 63).
fn bit(t: usize) -> u64 {
    1u64.checked_shl(t as u32).unwrap_or(0)
}

impl Silence {
    pub(super) fn new(now_ms: u64) -> Self {
        Self {
            since_ms: now_ms,
            hellos: 0,
            tried: 0,
            answers: 0,
            next_report_ms: now_ms + FIRST_REPORT_MS,
        }
    }

    pub(super) fn sent(&mut self, transport: usize) {
        self.hellos += 1;
        self.tried |= bit(transport);
    }

    pub(super) fn answered(&mut self) {
        self.answers += 1;
    }
}

impl Core {
    /// Logs the report when it is due (called on every tick while connecting).
    pub(super) fn report_silence(&mut self, now_ms: u64) {
        let Phase::Connecting(c) = &mut self.phase else {
            return;
        };
        if c.confirming.is_some() || c.silence.hellos == 0 || now_ms < c.silence.next_report_ms {
            return;
        }
        c.silence.next_report_ms = now_ms + REPORT_EVERY_MS;
        if let Some(s) = self.handshake_status(now_ms) {
            tracing::warn!(
                "no session yet: {} HELLOs over {} in {} s, {}; likely causes: {}",
                s.hellos,
                s.transports.join(", "),
                s.for_ms / 1000,
                if s.answers == 0 {
                    "none answered".to_owned()
                } else {
                    format!(
                        "{} answered with TIME or COOKIE, none with WELCOME",
                        s.answers
                    )
                },
                s.likely_causes.join("; ")
            );
        }
    }

    /// The handshake under way, if the agent is connecting and not yet confirming.
    pub(super) fn handshake_status(&self, now_ms: u64) -> Option<HandshakeStatus> {
        let Phase::Connecting(c) = &self.phase else {
            return None;
        };
        if c.confirming.is_some() {
            return None;
        }
        let s = &c.silence;
        let transports = self
            .links
            .iter()
            .enumerate()
            .filter(|(i, _)| s.tried & bit(*i) != 0)
            .map(|(_, l)| {
                let gws: Vec<String> = l.gateways.iter().map(|g| g.to_string()).collect();
                format!("{} (to {})", l.cfg.name, gws.join(" or "))
            })
            .collect();
        let for_ms = now_ms.saturating_sub(s.since_ms);
        let likely_causes = if for_ms < FIRST_REPORT_MS || s.hellos == 0 {
            Vec::new()
        } else {
            self.likely_causes(s.answers > 0)
        };
        Some(HandshakeStatus {
            for_ms,
            hellos: s.hellos,
            transports,
            answers: s.answers,
            likely_causes,
        })
    }

    fn likely_causes(&self, answered: bool) -> Vec<String> {
        let me = crate::proto::identity::public_hex(&self.identity);
        let listed = format!(
            "the gateway does not list this client's key {me} (on the gateway: `jvpn-ctl peers add {me}`)"
        );
        if answered {
            // A TIME or COOKIE verified against the configured gateway key: the
            // address and the key are right, the clock has been corrected.
            return vec![listed];
        }
        let key = hex::encode(self.gateway_pub);
        vec![
            "the gateway address is wrong or not reachable from here (a firewall, no route)"
                .to_owned(),
            listed,
            format!(
                "`gateway_public_key` ({}…) is not the gateway's key (`jvpn-ctl pubkey` on the gateway prints it)",
                &key[..16]
            ),
            "the clock is far off and the gateway's TIME answer was lost".to_owned(),
        ]
    }
}
