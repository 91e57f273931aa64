//! Free space in the state folder, and who may use it: the outbox and the state files come
//! first. What only helps (snapshots, alert frame copies, sampled normals, data set copies) is
//! written only while more than `alerts.disk_reserve_mb` stays free, so that it can never take
//! the space alerts need; a nearly full or full state folder is a health condition before any
//! alert is refused.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::health::Severity;
use crate::metrics::Metrics;

/// The health condition's name.
pub const CONDITION: &str = "disk";

/// Free bytes on the file system of `dir` (for an unprivileged process: `f_bavail`).
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let c = CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "a path with a NUL byte"))?;
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid C string and `s` a writable statvfs, as statvfs(3) requires.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(s.f_bavail as u64 * s.f_frsize as u64)
}

/// Whether something that only helps may write `bytes` under `dir` and still leave `reserve`
/// free. Unknown free space (statvfs refused) lets it write: the reserve is a guard, not a
/// reason to stop a box whose file system cannot tell.
pub fn may_write(dir: &Path, bytes: u64, reserve: u64) -> bool {
    free_bytes(dir).ok().is_none_or(|free| free >= reserve.saturating_add(bytes))
}

/// Of files sorted oldest first with these sizes, the index of the first to keep so that the
/// newest `keep` are kept and they fit in `max_bytes`: the ones before it are to be removed.
pub fn first_kept(sizes: &[u64], keep: usize, max_bytes: u64) -> usize {
    let mut bytes = 0u64;
    let fitting = sizes
        .iter()
        .rev()
        .take(keep)
        .take_while(|s| {
            bytes = bytes.saturating_add(**s);
            bytes <= max_bytes
        })
        .count();
    sizes.len() - fitting
}

/// Reads the free space and raises or clears the `disk` condition: a warning within a quarter
/// of the reserve above it (the helpers stop at the reserve itself, so the free space settles
/// just above it: alerts are still stored), failed below a tenth of the reserve or when the
/// outbox could not write (`outbox_failing`): alerts are being refused or not recorded.
pub fn check(dir: &Path, reserve: u64, outbox_failing: bool, metrics: &Metrics) {
    let Ok(free) = free_bytes(dir) else { return };
    metrics.set("vigil_state_dir_free_bytes", &[], free as f64);
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    if outbox_failing || free < reserve / 10 {
        metrics.health.raise(
            CONDITION,
            Severity::Failed,
            format!(
                "state_dir {} is full ({:.1} MiB free): alerts cannot be stored; free space there (snapshots/ and frames/ can go) and delivery resumes by itself",
                dir.display(),
                mib(free)
            ),
        );
    } else if free < reserve.saturating_add(reserve / 4) {
        metrics.health.raise(
            CONDITION,
            Severity::Warning,
            format!(
                "state_dir {} is nearly full ({:.1} MiB free, near alerts.disk_reserve_mb = {:.0}): snapshots, alert frames and sampled normals stop at the reserve, alerts do not; free space there",
                dir.display(),
                mib(free),
                mib(reserve)
            ),
        );
    } else {
        metrics.health.clear(CONDITION);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_is_read_and_the_reserve_decides() {
        let dir = std::env::temp_dir();
        let free = free_bytes(&dir).unwrap();
        assert!(free > 0);
        assert!(may_write(&dir, 1, 0));
        assert!(!may_write(&dir, 1, u64::MAX), "a reserve larger than the disk refuses");
        assert!(free_bytes(Path::new("/no/such/folder")).is_err());
        assert!(may_write(Path::new("/no/such/folder"), 1, u64::MAX), "unknown space does not stop writes");
    }

    #[test]
    fn the_newest_files_are_kept_within_both_the_count_and_the_bytes() {
        assert_eq!(first_kept(&[10, 10, 10, 10], 3, 100), 1, "the count");
        assert_eq!(first_kept(&[10, 10, 10, 10], 9, 25), 2, "the bytes");
        assert_eq!(first_kept(&[10, 50, 10], 9, 25), 2, "an old large file stops the run");
        assert_eq!(first_kept(&[], 3, 25), 0);
    }
}
