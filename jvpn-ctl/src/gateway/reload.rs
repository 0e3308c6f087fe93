//! Live reconfiguration (`jvpn-ctl gateway reload`, SIGHUP, and `jvpn-ctl peers
//! add|remove` on a running gateway): the peers file, the policy, the XDP limits and
//! the security-event interval take effect at once; every other setting is named as
//! needing a restart and left as it runs. A reload that fails (a file that does not
//! parse, a policy that does not validate) changes nothing.

use serde::Serialize;

use super::{config::GatewayConfig, core::Core};
use crate::{
    control::api::{Reloaded, SessionId},
    proto::Peers,
    session::{self, Event, Policy},
};

/// The top-level settings a reload applies; anything else that differs needs a
/// restart — `peers` too, which is the file's path (its contents are read again on
/// every reload).
const LIVE: [&str; 3] = ["policy", "limits", "security_aggregate_ms"];

/// What differs between the running configuration and the file's, by top-level key.
pub fn changed_keys(running: &GatewayConfig, new: &GatewayConfig) -> (Vec<String>, Vec<String>) {
    let (a, b) = (as_map(running), as_map(new));
    let mut live = Vec::new();
    let mut restart = Vec::new();
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for k in keys {
        if a.get(k) == b.get(k) {
            continue;
        }
        if LIVE.contains(&k.as_str()) {
            live.push(k.clone());
        } else {
            restart.push(k.clone());
        }
    }
    (live, restart)
}

fn as_map(c: &impl Serialize) -> serde_json::Map<String, serde_json::Value> {
    match serde_json::to_value(c) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    }
}

impl Core {
    /// Replaces the allow-list. The sessions of keys no longer listed end with CLOSE
    /// (`peer_removed`); every other session is left alone. Returns (added, removed,
    /// sessions closed).
    pub fn replace_peers(&mut self, peers: Peers, now_ms: u64) -> (usize, usize, usize) {
        let added = peers
            .iter()
            .filter(|p| !self.peers.contains(&p.key))
            .count();
        let removed = self
            .peers
            .iter()
            .filter(|p| !peers.contains(&p.key))
            .count();
        self.peers = peers;
        let mut gone: Vec<u64> = self
            .sessions
            .iter()
            .filter(|(_, e)| !self.peers.contains(&e.peer))
            .map(|(id, _)| *id)
            .collect();
        gone.sort_unstable();
        for &id in &gone {
            tracing::warn!(session = %SessionId(id), "closed: its key is no longer in the peers file");
            self.drive(id, &Event::PeerRemoved, None, now_ms);
        }
        (added, removed, gone.len())
    }

    /// Replaces the policy (already validated). Decisions from now on use it; every
    /// session's next timer is derived again at once, and the blacklist keeps the
    /// sources it has banned.
    pub fn replace_policy(&mut self, policy: Policy) {
        self.blacklist.reconfigure(
            policy.blacklist.clone(),
            policy.auto_blacklist_after,
            policy.auto_blacklist_s,
        );
        self.policy = policy;
        for (id, e) in &self.sessions {
            self.timers
                .schedule(*id, session::next_deadline(&e.session, &self.policy));
        }
    }

    /// Applies what a reload may change; `peers` was read from the (new) file. The
    /// caller has validated `new`. On an error nothing has changed.
    pub fn apply_reload(
        &mut self,
        running: &GatewayConfig,
        new: &GatewayConfig,
        peers: Peers,
        now_ms: u64,
    ) -> Result<Reloaded, String> {
        let (applied, need_restart) = changed_keys(running, new);
        if applied.iter().any(|k| k == "limits") {
            self.dp
                .set_gate(&new.limits.gate())
                .map_err(|e| format!("[limits] not applied: {e}"))?;
        }
        if applied.iter().any(|k| k == "policy") {
            self.replace_policy(new.policy.clone());
        }
        if applied.iter().any(|k| k == "security_aggregate_ms") {
            self.set_security_aggregate_ms(new.security_aggregate_ms);
        }
        let listed = peers.len();
        let (peers_added, peers_removed, sessions_closed) = self.replace_peers(peers, now_ms);
        Ok(Reloaded {
            peers: listed,
            peers_added,
            peers_removed,
            sessions_closed,
            applied,
            need_restart,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> GatewayConfig {
        GatewayConfig::parse(&format!(
            "interfaces = [\"eth0\"]\nidentity = \"/k\"\npeers = \"/p\"\n{extra}\n[exit]\n\
             data = \"10.9.0.2:51820\"\nlink = \"10.9.0.2:51821\"\nlink_key = \"/l\"\n\
             [pool]\ncidr = \"10.99.0.0/24\"\n"
        ))
        .unwrap()
    }

    #[test]
    fn live_keys_are_applied_the_rest_need_a_restart() {
        let a = cfg("");
        assert_eq!(changed_keys(&a, &a), (vec![], vec![]));
        let mut b = a.clone();
        b.policy.keepalive_interval_ms += 1;
        b.limits.hello_budget_pps += 1;
        b.port += 1;
        b.interfaces.push("eth1".into());
        b.security_aggregate_ms += 1;
        let (live, restart) = changed_keys(&a, &b);
        assert_eq!(live, ["limits", "policy", "security_aggregate_ms"]);
        assert_eq!(restart, ["interfaces", "port"]);
        // Another peers file is another file to watch: a restart.
        let mut c = a.clone();
        c.peers = "/q".into();
        assert_eq!(changed_keys(&a, &c), (vec![], vec!["peers".to_string()]));
    }
}
