//! What `/healthz`, the systemd watchdog and the `vigil_health` metric report: whether the
//! daemon is serving, and every condition that stops or threatens detection (a stage or
//! source that ended, a full state folder, a clock not yet set).
//!
//! A health check that says ok while nothing is scored is the failure this guards against:
//! every task the data path needs holds a [`Vital`], which marks the daemon failed when the
//! task ends before the stop (a panic included, since unwinding drops it).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

/// How bad a condition is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Detection goes on, but something needs attention (`/healthz` still answers 200).
    Warning,
    /// Detection is stopped or alerts are being refused (`/healthz` answers 503, the watchdog
    /// is no longer fed).
    Failed,
}

/// One condition, by name (`stage:decide`, `disk`, `clock`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Condition {
    /// How bad it is.
    pub severity: Severity,
    /// What happened and what to do.
    pub message: String,
}

/// The daemon's health.
#[derive(Debug, Default)]
pub struct Health {
    armed: AtomicBool,
    ready: AtomicBool,
    stopping: AtomicBool,
    conditions: Mutex<BTreeMap<String, Condition>>,
}

/// What `/healthz` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Whether the daemon is serving and nothing has failed.
    pub ok: bool,
    /// The text: `ok`, or one line per condition.
    pub text: String,
}

impl Health {
    /// Marks the daemon ready (bundles loaded, sources started) or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Arms the vitals: from now until the stop, a vital task that ends is a failure. One-shot
    /// commands (`score`, `bench`) share the stages without arming, so their ends are quiet.
    pub fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Marks the stop as begun: tasks ending from now on are expected.
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.ready.store(false, Ordering::SeqCst);
    }

    /// Whether the stop has begun.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Whether the daemon is ready and nothing has failed.
    pub fn is_ok(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && self.failed().is_none()
    }

    /// Raises (or updates) a condition; logged when it is new or its severity changes.
    pub fn raise(&self, name: &str, severity: Severity, message: impl Into<String>) {
        let message = message.into();
        let mut c = self.conditions.lock().expect("health lock");
        let changed = c.get(name).is_none_or(|old| old.severity != severity);
        if changed {
            match severity {
                Severity::Failed => tracing::error!(condition = name, "unhealthy: {message}"),
                Severity::Warning => tracing::warn!(condition = name, "health warning: {message}"),
            }
        }
        c.insert(name.to_owned(), Condition { severity, message });
    }

    /// Clears a condition; logged when it was raised.
    pub fn clear(&self, name: &str) {
        if let Some(old) = self.conditions.lock().expect("health lock").remove(name) {
            tracing::info!(condition = name, "health: cleared ({})", old.message);
        }
    }

    /// The conditions now, by name.
    pub fn conditions(&self) -> BTreeMap<String, Condition> {
        self.conditions.lock().expect("health lock").clone()
    }

    /// The first failed condition, if any.
    pub fn failed(&self) -> Option<(String, Condition)> {
        let c = self.conditions.lock().expect("health lock");
        c.iter().find(|(_, c)| c.severity == Severity::Failed).map(|(n, c)| (n.clone(), c.clone()))
    }

    /// What `/healthz` answers.
    pub fn report(&self) -> Report {
        let conditions = self.conditions();
        let ready = self.ready.load(Ordering::SeqCst);
        let failed = conditions.values().any(|c| c.severity == Severity::Failed);
        let mut lines: Vec<String> = conditions
            .iter()
            .map(|(name, c)| {
                let word = if c.severity == Severity::Failed { "failed" } else { "warning" };
                format!("{word}: {name}: {}", c.message)
            })
            .collect();
        if !ready && !failed {
            lines.insert(0, if self.is_stopping() { "stopping".into() } else { "starting".into() });
        }
        let ok = ready && !failed;
        let text = if lines.is_empty() { "ok".to_owned() } else { lines.join("\n") };
        Report { ok, text: if ok && !conditions.is_empty() { format!("ok\n{text}") } else { text } }
    }

    /// A guard for a task the data path needs: dropped before the stop (the task returned
    /// early or panicked), it raises `stage:<name>` as failed.
    pub fn vital(self: &std::sync::Arc<Self>, name: impl Into<String>) -> Vital {
        Vital { health: self.clone(), name: name.into() }
    }
}

/// Held by a task the data path needs; see [`Health::vital`].
#[derive(Debug)]
pub struct Vital {
    health: std::sync::Arc<Health>,
    name: String,
}

impl Drop for Vital {
    fn drop(&mut self) {
        if self.health.is_stopping() || !self.health.armed.load(Ordering::SeqCst) {
            return;
        }
        let how = if std::thread::panicking() { "crashed (a panic; see the log above)" } else { "ended" };
        self.health.raise(
            &format!("stage:{}", self.name),
            Severity::Failed,
            format!(
                "{} {how} while the daemon runs, so frames are no longer scored; vigil ends so that \
                 systemd starts it again. This is a bug in vigil: please report it with the log",
                self.name
            ),
        );
    }
}

/// The earliest time a box's clock can show once it is set: this build's release year. A
/// board without a real-time clock starts at 1970 until NTP sets it.
pub const CLOCK_FLOOR: Duration = Duration::from_secs(1_767_225_600); // 2026-01-01T00:00:00Z

/// Whether the system clock looks set (not before [`CLOCK_FLOOR`]).
pub fn clock_is_set(now: SystemTime) -> bool {
    now.duration_since(SystemTime::UNIX_EPOCH).is_ok_and(|d| d >= CLOCK_FLOOR)
}

/// Faults a test arms to kill a stage the way a bug would, where nothing from outside can
/// (test builds only: the `fuzzing` feature the tests build with).
#[cfg(feature = "fuzzing")]
pub mod faults {
    use std::sync::Mutex;

    static ARMED: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

    /// Makes `stage` of the daemon with `device` id end at its next frame.
    pub fn arm(device: &str, stage: &str) {
        ARMED.lock().expect("faults lock").push((device.to_owned(), stage.to_owned()));
    }

    /// Whether `stage` of `device` is to end now (once).
    pub fn take(device: &str, stage: &str) -> bool {
        let mut armed = ARMED.lock().expect("faults lock");
        let at = armed.iter().position(|(d, s)| d == device && s == stage);
        at.map(|i| armed.remove(i)).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_vital_dropped_by_a_panic_fails_the_daemon_but_not_after_the_stop() {
        let h = Arc::new(Health::default());
        h.arm();
        h.set_ready(true);
        assert_eq!(h.report(), Report { ok: true, text: "ok".into() });
        let v = h.vital("decide");
        let r = std::thread::spawn(move || {
            let _v = v;
            panic!("boom");
        })
        .join();
        assert!(r.is_err());
        let rep = h.report();
        assert!(!rep.ok);
        assert!(rep.text.contains("failed: stage:decide: decide crashed"), "{}", rep.text);

        let h = Arc::new(Health::default());
        h.arm();
        h.set_ready(true);
        let v = h.vital("source cam1");
        h.set_stopping();
        drop(v);
        assert!(h.failed().is_none(), "a task ending in the stop is expected");
    }

    #[test]
    fn warnings_keep_ok_failures_do_not_and_clearing_restores() {
        let h = Health::default();
        h.set_ready(true);
        h.raise("disk", Severity::Warning, "state_dir 95% full");
        let r = h.report();
        assert!(r.ok && r.text.starts_with("ok\nwarning: disk: state_dir 95% full"), "{}", r.text);
        h.raise("disk", Severity::Failed, "state_dir full: alerts refused");
        assert!(!h.report().ok);
        h.clear("disk");
        assert!(h.report().ok);
        assert!(!clock_is_set(SystemTime::UNIX_EPOCH + Duration::from_secs(3600)));
        assert!(clock_is_set(SystemTime::now()));
    }
}
