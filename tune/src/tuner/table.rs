//! The live status table of an experiment.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::tuner::results::{TrialResult, TrialStatus};
use crate::tuner::{TuneConfig, TRAINING_ITERATION};

/// The live status table: on a terminal it is redrawn in place (twice a
/// second at most); into a file or pipe a new copy is printed every few
/// seconds, so logs stay readable.
pub(crate) struct Table {
    terminal: bool,
    /// Lines drawn last time (to redraw over them).
    drawn: usize,
    last: Option<Instant>,
}

impl Table {
    pub(crate) fn new() -> Table {
        use std::io::IsTerminal;
        Table {
            terminal: std::io::stdout().is_terminal(),
            drawn: 0,
            last: None,
        }
    }

    /// Draws the table if its refresh interval has passed (`force`: now).
    pub(crate) fn show(
        &mut self,
        trials: &[TrialResult],
        c: &TuneConfig,
        scheduler: &str,
        elapsed: Duration,
        force: bool,
    ) {
        let every = if self.terminal {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(5)
        };
        if !force && self.last.is_some_and(|t| t.elapsed() < every) {
            return;
        }
        self.last = Some(Instant::now());
        let lines = table_lines(trials, c, scheduler, elapsed);
        let mut out = String::new();
        if self.terminal && self.drawn > 0 {
            // Up over the last drawing, and clear from there down.
            out.push_str(&format!("\x1b[{}A\x1b[J", self.drawn));
        }
        for l in &lines {
            out.push_str(l);
            out.push('\n');
        }
        self.drawn = lines.len();
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(out.as_bytes());
        let _ = stdout.flush();
    }

    /// Other output is about to be printed: the next drawing starts below
    /// it instead of over it.
    pub(crate) fn detach(&mut self) {
        self.drawn = 0;
    }
}

/// The status table: counts by status and resources in use, then each
/// trial's status, parameters and latest metrics, best first.
fn table_lines(trials: &[TrialResult], c: &TuneConfig, scheduler: &str, elapsed: Duration) -> Vec<String> {
    let count = |f: &dyn Fn(&TrialStatus) -> bool| trials.iter().filter(|t| f(&t.status)).count();
    let running = count(&|s| *s == TrialStatus::Running);
    let worker_cpus: f64 = c.worker_bundles.iter().filter_map(|b| b.get("CPU")).sum();
    let custom: String = c
        .custom_resources_per_trial
        .iter()
        .map(|(name, amount)| format!(", {} {name}", running as f64 * amount))
        .collect();
    let mut lines = vec![format!(
        "== {:.0} s: {} running, {} pending, {} paused, {} terminated, {} errored | {} CPUs, {} GPUs{custom} in use | {scheduler} | {} by {:?}",
        elapsed.as_secs_f64(),
        running,
        count(&|s| *s == TrialStatus::Pending),
        count(&|s| *s == TrialStatus::Paused),
        count(&|s| *s == TrialStatus::Terminated),
        count(&|s| matches!(s, TrialStatus::Error(_))),
        running as f64 * (c.cpus_per_trial + worker_cpus),
        running as f64 * c.gpus_per_trial,
        c.metric,
        c.mode
    )];
    let mut rows: Vec<&TrialResult> = trials.iter().collect();
    rows.sort_by(|a, b| {
        let s = |t: &TrialResult| t.last.get(&c.metric).map(|v| c.mode.score(*v)).unwrap_or(f64::MIN);
        s(b).total_cmp(&s(a))
    });
    for t in rows.iter().take(20) {
        let status = t.status_label();
        // Up to two other metrics beside the experiment's.
        let others: Vec<String> = t
            .last
            .iter()
            .filter(|(k, _)| *k != &c.metric && k.as_str() != TRAINING_ITERATION)
            .take(2)
            .map(|(k, v)| format!("{k}={v:.4}"))
            .collect();
        lines.push(format!(
            "   {} {:<10} iter {:>4}  {} = {:<12} {} {}",
            t.trial,
            status,
            t.last.get(TRAINING_ITERATION).copied().unwrap_or(0.0),
            c.metric,
            t.last
                .get(&c.metric)
                .map(|v| format!("{v:.6}"))
                .unwrap_or_else(|| "-".into()),
            serde_json::to_string(&t.config).unwrap_or_default(),
            others.join(" ")
        ));
    }
    if rows.len() > 20 {
        lines.push(format!("   ... and {} more", rows.len() - 20));
    }
    lines
}
