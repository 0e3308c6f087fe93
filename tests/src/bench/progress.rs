//! Progress on the terminal (stderr): one bar per phase, and a spinner line with the
//! live rate while a generator runs. Plain lines instead when stderr is not a terminal
//! (CI logs), so a log shows what happened without control characters.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Phase {
    bar: ProgressBar,
    name: &'static str,
}

impl Phase {
    pub fn new(name: &'static str, steps: u64) -> Self {
        let bar = ProgressBar::with_draw_target(Some(steps), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} {elapsed:>4} {msg}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(name);
        if bar.is_hidden() {
            eprintln!("== {name}: {steps} steps");
        } else {
            bar.enable_steady_tick(Duration::from_millis(250));
        }
        Self { bar, name }
    }

    /// What the phase is doing now.
    pub fn say(&self, msg: impl Into<String>) {
        let msg = msg.into();
        if self.bar.is_hidden() {
            eprintln!("   {}: {msg}", self.name);
        }
        self.bar.set_message(msg);
    }

    /// A live figure (e.g. the current rate): shown on the bar, not logged.
    pub fn live(&self, msg: impl Into<String>) {
        self.bar.set_message(msg.into());
    }

    pub fn step(&self) {
        self.bar.inc(1);
    }

    pub fn done(self, summary: impl Into<String>) {
        let summary = summary.into();
        self.bar.finish_and_clear();
        eprintln!("== {}: {summary}", self.name);
    }
}
