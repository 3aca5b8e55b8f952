//! Progress of long work: a bar on a terminal, log lines otherwise (cron, CI, `--json`).

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

enum Mode {
    Bar(ProgressBar),
    Log {
        what: String,
        total: Option<u64>,
        last: Instant,
        started: Instant,
    },
    Hidden,
}

/// Reports progress of one piece of work at a time.
pub struct Progress {
    terminal: bool,
    enabled: bool,
    mode: Mutex<Mode>,
}

impl Progress {
    /// A bar when stderr is a terminal, log lines otherwise.
    pub fn auto() -> Progress {
        Progress {
            terminal: std::io::stderr().is_terminal(),
            enabled: true,
            mode: Mutex::new(Mode::Hidden),
        }
    }

    /// Shows nothing (tests, benchmarks).
    pub fn hidden() -> Progress {
        Progress {
            terminal: false,
            enabled: false,
            mode: Mutex::new(Mode::Hidden),
        }
    }

    /// Whether anything is shown (callers skip work done only for the display, e.g. counting).
    pub fn is_shown(&self) -> bool {
        self.enabled
    }

    pub fn start(&self, what: &str, total: Option<u64>) {
        if !self.enabled {
            return;
        }
        let mode = if self.terminal {
            let bar = match total {
                Some(t) => ProgressBar::with_draw_target(Some(t), ProgressDrawTarget::stderr())
                    .with_style(
                        ProgressStyle::with_template(
                            "{msg:<18} [{bar:40}] {pos}/{len} ({per_sec}, {eta} left)",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_bar())
                        .progress_chars("=> "),
                    ),
                None => ProgressBar::new_spinner(),
            };
            bar.set_message(what.to_owned());
            bar.enable_steady_tick(Duration::from_millis(200));
            Mode::Bar(bar)
        } else {
            tracing::info!(total, "{what}: started");
            Mode::Log {
                what: what.to_owned(),
                total,
                last: Instant::now(),
                started: Instant::now(),
            }
        };
        if let Ok(mut m) = self.mode.lock() {
            *m = mode;
        }
    }

    pub fn set(&self, done: u64) {
        let Ok(mut m) = self.mode.lock() else { return };
        match &mut *m {
            Mode::Bar(bar) => bar.set_position(done),
            Mode::Log {
                what, total, last, ..
            } => {
                if last.elapsed() >= Duration::from_secs(5) {
                    *last = Instant::now();
                    tracing::info!(done, total = *total, "{what}: in progress");
                }
            }
            Mode::Hidden => {}
        }
    }

    pub fn finish(&self, done: u64) {
        let Ok(mut m) = self.mode.lock() else { return };
        match std::mem::replace(&mut *m, Mode::Hidden) {
            Mode::Bar(bar) => {
                bar.set_position(done);
                bar.finish_and_clear();
            }
            Mode::Log { what, started, .. } => {
                tracing::info!(
                    done,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "{what}: done"
                );
            }
            Mode::Hidden => {}
        }
    }
}
