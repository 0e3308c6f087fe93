//! Time for the gateway and the client agent.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The daemons' notion of time: wall-clock milliseconds at start plus monotonic time
/// since, so timers never jump with the system clock while timestamps stay comparable
/// with the clients' wall clocks.
#[derive(Clone, Copy)]
pub struct Clock {
    wall_ms: u64,
    start: Instant,
}

impl Clock {
    pub fn new() -> Self {
        let wall_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Self {
            wall_ms,
            start: Instant::now(),
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.wall_ms + self.start.elapsed().as_millis() as u64
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}
