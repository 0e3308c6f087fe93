//! What the kernel says about each transport's link (the shell watches rtnetlink):
//! a link that went down, an address that went away or a gateway with no route is
//! DEAD at once, with that cause, and the session recovers over the best remaining
//! transport without waiting for the loss TTL; a transport that comes back is probed
//! at once; one that follows its interface and got a new address carries the
//! session again from there (docs/client.md, "Link signals").

use super::*;

/// Why the kernel says a transport cannot carry anything now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Down {
    /// The interface is down or has no carrier.
    LinkDown,
    /// The transport's source address is no longer on the interface (or a following
    /// transport's interface has no address of its family).
    AddressLost,
    /// No route from the transport to its gateway address.
    NoRoute,
}

impl Down {
    pub fn name(self) -> &'static str {
        match self {
            Down::LinkDown => "link_down",
            Down::AddressLost => "address_lost",
            Down::NoRoute => "no_route",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkSignal {
    Down(Down),
    /// It can carry packets again (link up, address back, route back).
    Up,
    /// Its socket is now bound to this new address (an interface-following
    /// transport whose interface's address changed).
    Rebound(SocketAddr),
}

impl Core {
    /// A change the shell saw in transport `t`'s link; repeated signals are no-ops.
    pub(super) fn on_link(&mut self, t: usize, signal: LinkSignal, now_ms: u64) {
        let Some(l) = self.links.get_mut(t) else {
            return;
        };
        match signal {
            LinkSignal::Down(d) => {
                if l.down == Some(d) {
                    return;
                }
                l.down = Some(d);
                l.fast_return_until = 0;
                tracing::warn!("transport {} is DEAD: {}", l.cfg.name, d.name());
                self.abandon_attempt_over(t, d.name(), now_ms);
                // Decide now: the session must not wait for the next tick.
                self.tick(now_ms);
            }
            LinkSignal::Up => {
                if l.down.is_none() {
                    return;
                }
                tracing::info!("transport {} is back ({} cleared)", l.cfg.name, l.cause);
                self.restart_link(t, "link_up", now_ms);
                self.probe_all(now_ms, false);
            }
            LinkSignal::Rebound(local) => {
                tracing::info!(
                    "transport {}: new source address {local} (was {})",
                    l.cfg.name,
                    l.local
                );
                l.local = local.to_string();
                // A cookie is bound to the source address and port it was given to.
                l.cookie = None;
                // An exchange under way over it used the old socket.
                self.abandon_attempt_over(t, "address_added", now_ms);
                self.restart_link(t, "address_added", now_ms);
                self.links[t].fast_return_until = now_ms + FAST_RETURN_MS;
                let bound_here = matches!(&self.phase, Phase::Up(s) if s.bound == t);
                if bound_here {
                    // The binding is the old address: rebind from the new one now.
                    if let Phase::Up(s) = &mut self.phase {
                        s.attempt = None;
                        s.dead_since.get_or_insert(now_ms);
                        s.trigger = "address_added";
                    }
                    self.counters.rebinds += 1;
                    self.start_attempt(t, ReattachCause::AddressChanged, now_ms);
                }
                self.probe_all(now_ms, false);
            }
        }
    }

    /// Transport `t` can carry packets again: what was measured before says nothing
    /// about it now, so it starts over as unknown and is probed at once.
    fn restart_link(&mut self, t: usize, cause: &'static str, now_ms: u64) {
        let l = &mut self.links[t];
        l.down = None;
        l.start_over(now_ms);
        l.backoff_until = 0;
        self.set_status(t, Status::Unknown, cause, now_ms);
    }

    /// A reattach under way over a transport that just went down (or was bound to
    /// a new address) cannot succeed: it fails now (DEGRADED, `transport_ttl`) and
    /// the next candidate is tried.
    fn abandon_attempt_over(&mut self, t: usize, why: &str, now_ms: u64) {
        let over_t = matches!(&self.phase, Phase::Up(s) if s.attempt.as_ref().is_some_and(|a| a.candidate == t));
        if over_t {
            tracing::warn!("reattach over {} abandoned: {why}", self.links[t].cfg.name);
            self.attempt_failed(t, Detail::TransportTtl, now_ms);
        }
    }
}
