//! One training at a time in a process.

/// burn's random source is per backend, not per run: two trainings in one process would
/// draw from it in turns and neither would be reproducible, so they take turns as a whole.
pub(super) static TRAINING: std::sync::Mutex<()> = std::sync::Mutex::new(());
