//! Per-transport health from keepalives and traffic: RTT, jitter, loss and silence.
//!
//! Pure bookkeeping with time as an input. Every transport is probed with KEEPALIVE
//! (the gateway answers on any of the session's transports), so standby transports
//! have a measured health before the session ever needs them.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Probes kept for the loss estimate.
pub const WINDOW: usize = 20;

/// What a transport looks like now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Nothing heard yet (just started, or never answered).
    Unknown,
    Healthy,
    /// Answers, but over a loss / RTT / jitter threshold or silent for a while.
    Volatile,
    /// Silent for the loss TTL (or, in the core, its link is down).
    Dead,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Unknown => "unknown",
            Status::Healthy => "healthy",
            Status::Volatile => "volatile",
            Status::Dead => "dead",
        }
    }
}

/// Why a transport measured over a threshold: the cause code of its events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Over {
    Loss,
    Rtt,
    Jitter,
}

impl Over {
    pub fn name(self) -> &'static str {
        match self {
            Over::Loss => "loss",
            Over::Rtt => "rtt",
            Over::Jitter => "jitter",
        }
    }
}

/// The thresholds in force (configuration plus the gateway's hints).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thresholds {
    pub max_loss_pct: u32,
    pub max_rtt_ms: u32,
    pub max_jitter_ms: u32,
    pub volatile_after_ms: u64,
    pub loss_ttl_ms: u64,
    /// A probe unanswered for this long counts as lost whatever the RTT says.
    pub probe_timeout_ms: u64,
    /// Over a threshold this long before the transport is judged over it; under the
    /// leave thresholds [`LEAVE_DWELLS`] times as long before it is judged well again.
    pub quality_dwell_ms: u64,
}

/// The least time a probe is given before it counts as lost, however short the RTT
/// (a busy gateway or agent answers late, not never).
pub const LOST_AFTER_MIN_MS: u64 = 200;
/// DATA samples (answered probes on the binding) kept for the data loss: this long.
pub const DATA_WINDOW_MS: u64 = 1_000;
/// DATA packets in the window before the data loss is judged instead of the probes'.
pub const DATA_MIN: u64 = 50;
/// Probes that must be due before loss is judged (one lost of two is not 50 %).
pub const MIN_DUE: usize = WINDOW / 2;
/// Leaving a quality verdict takes this many dwells under the leave thresholds.
pub const LEAVE_DWELLS: u64 = 3;

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
    /// The quality verdict, with hysteresis: which threshold the transport is judged
    /// to be over (entered after a dwell over it, left after longer under the lower
    /// leave thresholds), so a lossy link gives one VOLATILE, not a flap.
    over: Option<Over>,
    /// Since when the measurements have pointed the other way than `over`.
    crossing_since: Option<u64>,
    /// Tunnel DATA between two answered probes on the binding: (answered at, sent,
    /// forwarded by the relay), for the last [`DATA_WINDOW_MS`].
    data: VecDeque<(u64, u64, u64)>,
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

    /// The agent itself could not run for `gap_ms` (its own backlog, a suspended
    /// process): that time is not the transport's silence.
    /// The probes outstanding over the gap are forgotten: their answers, read late,
    /// would say nothing of the path's RTT or loss.
    pub fn pause(&mut self, gap_ms: u64) {
        self.since_ms += gap_ms;
        if let Some(t) = &mut self.last_rx_ms {
            *t += gap_ms;
        }
        self.probes.retain(|(_, acked)| *acked);
    }

    /// The session woke from idle: the slow schedule's gaps between probes are not
    /// silence, so silence counts from now (a probe still outstanding and then lost
    /// is loss as ever).
    pub fn rebase(&mut self, now_ms: u64) {
        let gap = self.silence_ms(now_ms);
        self.since_ms += gap;
        if let Some(t) = &mut self.last_rx_ms {
            *t += gap;
        }
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

    /// Between two answered probes on the binding, `sent` DATA left and the relay
    /// forwarded `forwarded` of them: under traffic, many more samples than probes.
    pub fn on_data_sample(&mut self, now_ms: u64, sent: u64, forwarded: u64) {
        // Raw: the relay's count is read when the gateway answers, so one sample may
        // include DATA sent after its probe and the next one lack it; only the
        // window's totals are meaningful (clamped in `data_loss_pct`).
        self.data.push_back((now_ms, sent, forwarded));
        while self
            .data
            .front()
            .is_some_and(|(at, _, _)| now_ms.saturating_sub(*at) > DATA_WINDOW_MS)
        {
            self.data.pop_front();
        }
    }

    /// Forgets the DATA samples (the binding moved: they described another path).
    pub fn clear_data(&mut self) {
        self.data.clear();
    }

    /// Loss of the tunnel's DATA over the last second, if enough was sent to say.
    pub fn data_loss_pct(&self, now_ms: u64) -> Option<u32> {
        let (sent, fwd) = self
            .data
            .iter()
            .filter(|(at, _, _)| now_ms.saturating_sub(*at) <= DATA_WINDOW_MS)
            .fold((0, 0), |(s, f), (_, ds, df)| (s + ds, f + df));
        (sent >= DATA_MIN).then(|| ((sent - fwd.min(sent)) * 100 / sent) as u32)
    }

    /// The loss the verdict uses: the DATA's under traffic (many samples), else the
    /// probes' (`None`: too few probes due to say).
    fn judged_loss(&self, now_ms: u64, t: &Thresholds) -> Option<u32> {
        if let Some(d) = self.data_loss_pct(now_ms) {
            return Some(d);
        }
        let (n, lost) = self.due(now_ms, t);
        (n >= MIN_DUE).then(|| (lost * 100 / n) as u32)
    }

    pub fn rtt_ms(&self) -> Option<f64> {
        self.srtt_ms
    }

    pub fn jitter_ms(&self) -> f64 {
        self.jitter_ms
    }

    /// How long a probe may go unanswered before it counts as lost: a few RTTs (RFC
    /// 6298's RTO shape), at least [`LOST_AFTER_MIN_MS`], at most the probe timeout.
    fn lost_after_ms(&self, t: &Thresholds) -> u64 {
        let cap = t.probe_timeout_ms.max(LOST_AFTER_MIN_MS);
        self.srtt_ms.map_or(cap, |r| {
            ((2.0 * r + 4.0 * self.jitter_ms) as u64).clamp(LOST_AFTER_MIN_MS, cap)
        })
    }

    /// (probes old enough to judge, of which lost).
    fn due(&self, now_ms: u64, t: &Thresholds) -> (usize, usize) {
        let lost_after = self.lost_after_ms(t);
        self.probes
            .iter()
            .filter(|(ts, acked)| *acked || now_ms.saturating_sub(*ts) >= lost_after)
            .fold((0, 0), |(n, lost), (_, acked)| {
                (n + 1, lost + usize::from(!*acked))
            })
    }

    /// Share of the probes old enough to have been answered that were not.
    pub fn loss_pct(&self, now_ms: u64, t: &Thresholds) -> u32 {
        match self.due(now_ms, t) {
            (0, _) => 0,
            (n, lost) => (lost * 100 / n) as u32,
        }
    }

    pub fn silence_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.last_rx_ms.unwrap_or(self.since_ms))
    }

    /// Which threshold the measurements are over now (entering), or None.
    fn over_now(&self, now_ms: u64, t: &Thresholds) -> Option<Over> {
        if self
            .judged_loss(now_ms, t)
            .is_some_and(|l| l > t.max_loss_pct)
        {
            return Some(Over::Loss);
        }
        let rtt = self.srtt_ms?;
        if rtt > f64::from(t.max_rtt_ms) {
            return Some(Over::Rtt);
        }
        (self.jitter_ms > f64::from(t.max_jitter_ms)).then_some(Over::Jitter)
    }

    /// Under the leave thresholds: half the loss, 80 % of the RTT and jitter limits.
    fn well_now(&self, now_ms: u64, t: &Thresholds) -> bool {
        let rtt = self.srtt_ms.unwrap_or(0.0);
        self.judged_loss(now_ms, t).unwrap_or(0) <= t.max_loss_pct / 2
            && rtt <= 0.8 * f64::from(t.max_rtt_ms)
            && self.jitter_ms <= 0.8 * f64::from(t.max_jitter_ms)
    }

    /// The quality verdict as of the last [`Health::evaluate`].
    pub fn over(&self) -> Option<Over> {
        self.over
    }

    pub fn status(&self, now_ms: u64, t: &Thresholds) -> Status {
        let silence = self.silence_ms(now_ms);
        if silence >= t.loss_ttl_ms {
            return Status::Dead;
        }
        if self.last_rx_ms.is_none() {
            return Status::Unknown;
        }
        if silence >= t.volatile_after_ms || self.over.is_some() {
            return Status::Volatile;
        }
        Status::Healthy
    }

    /// Moves the quality verdict on (with its dwells), then returns the status and
    /// how long it has been Healthy.
    pub fn evaluate(&mut self, now_ms: u64, t: &Thresholds) -> (Status, u64) {
        let (turning, dwell) = match self.over {
            None => {
                let over = self.over_now(now_ms, t);
                (over.map(Some), t.quality_dwell_ms)
            }
            Some(_) => (
                self.well_now(now_ms, t).then_some(None),
                t.quality_dwell_ms * LEAVE_DWELLS,
            ),
        };
        match turning {
            Some(next) => {
                let since = *self.crossing_since.get_or_insert(now_ms);
                if now_ms.saturating_sub(since) >= dwell {
                    self.over = next;
                    self.crossing_since = None;
                }
            }
            None => self.crossing_since = None,
        }
        let s = self.status(now_ms, t);
        if s == Status::Healthy {
            let since = *self.healthy_since.get_or_insert(now_ms);
            (s, now_ms.saturating_sub(since))
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
        quality_dwell_ms: 0,
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
        assert_eq!(h.evaluate(150, &T).0, Status::Volatile, "RTT over 100");
        assert_eq!(h.over(), Some(Over::Rtt));

        let mut h = Health::new(0);
        for i in 0..10u64 {
            h.on_probe_sent(i * 10);
            if i < 7 {
                h.on_probe_ack(i * 10, i * 10 + 1);
            }
        }
        // 3 of 10 unanswered once they are older than their loss timeout (the
        // floor: the RTT is 1 ms).
        assert_eq!(h.loss_pct(200, &T), 0, "not yet due");
        assert_eq!(h.loss_pct(300, &T), 30);
        h.on_rx(300);
        assert_eq!(h.evaluate(300, &T).0, Status::Volatile);
        assert_eq!(h.over(), Some(Over::Loss));
    }

    #[test]
    fn a_lost_probe_counts_after_a_few_rtts_not_the_whole_timeout() {
        let t = Thresholds {
            probe_timeout_ms: 2_000,
            ..T
        };
        let mut h = Health::new(0);
        h.on_probe_sent(0);
        h.on_probe_ack(0, 20);
        h.on_probe_sent(100);
        assert_eq!(h.loss_pct(299, &t), 0);
        // RTT 20 ms, jitter 10: lost after 2 × 20 + 4 × 10 = 80 → the 200 ms floor.
        assert_eq!(h.loss_pct(300, &t), 50);
        // A late answer still counts.
        h.on_probe_ack(100, 350);
        assert_eq!(h.loss_pct(350, &t), 0);
    }

    /// Probes every 100 ms, `lost` of each 10 unanswered, from `from` for `n` probes.
    fn feed(h: &mut Health, from: u64, n: u64, lost: &[u64], t: &Thresholds) -> Vec<Status> {
        let mut seen = Vec::new();
        for k in 0..n {
            let ts = from + k * 100;
            h.on_probe_sent(ts);
            if !lost.contains(&(k % 10)) {
                h.on_probe_ack(ts, ts + 1);
            }
            let s = h.evaluate(ts + 1, t).0;
            if seen.last() != Some(&s) {
                seen.push(s);
            }
        }
        seen
    }

    #[test]
    fn a_lossy_link_gives_one_volatile_and_leaves_it_only_when_well() {
        let t = Thresholds {
            quality_dwell_ms: 400,
            ..T
        };
        let mut h = Health::new(0);
        assert_eq!(feed(&mut h, 0, 20, &[], &t), [Status::Healthy]);
        // 40 % loss: over 20 % after a few probes, then the dwell: one VOLATILE that
        // stays, however the window moves.
        let seen = feed(&mut h, 2_000, 60, &[1, 3, 5, 7], &t);
        assert_eq!(seen, [Status::Healthy, Status::Volatile]);
        // 20 % loss (over the leave threshold of 10 %): still VOLATILE.
        assert_eq!(feed(&mut h, 8_000, 40, &[2, 7], &t), [Status::Volatile]);
        // Clean again: healthy only after three dwells under the leave thresholds.
        let seen = feed(&mut h, 12_000, 40, &[], &t);
        assert_eq!(seen, [Status::Volatile, Status::Healthy]);
        assert_eq!(h.over(), None);
    }

    #[test]
    fn light_loss_never_crosses() {
        let t = Thresholds {
            quality_dwell_ms: 400,
            ..T
        };
        let mut h = Health::new(0);
        // 10 % loss for a minute of probes.
        assert_eq!(feed(&mut h, 0, 600, &[4], &t), [Status::Healthy]);
    }

    #[test]
    fn under_traffic_the_data_loss_is_judged() {
        let t = Thresholds {
            quality_dwell_ms: 0,
            ..T
        };
        let mut h = Health::new(0);
        // Every probe answered, but the relay forwarded 6 of each 10 DATA.
        for k in 0..10u64 {
            let ts = k * 100;
            h.on_probe_sent(ts);
            h.on_probe_ack(ts, ts + 1);
            h.on_data_sample(ts + 1, 10, 6);
        }
        assert_eq!(h.data_loss_pct(901), Some(40));
        assert_eq!(h.loss_pct(901, &t), 0, "the probes saw none");
        assert_eq!(h.evaluate(901, &t).0, Status::Volatile);
        assert_eq!(h.over(), Some(Over::Loss));
        // Too little DATA to say: the probes decide.
        let mut h = Health::new(0);
        h.on_data_sample(1, 10, 0);
        assert_eq!(h.data_loss_pct(1), None);
    }

    #[test]
    fn a_pause_of_the_agent_is_not_silence() {
        let mut h = Health::new(0);
        h.on_rx(100);
        h.pause(800);
        assert_eq!(h.silence_ms(1_000), 100);
        assert_eq!(h.status(1_000, &T), Status::Healthy);
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
