//! Putting a bundle in service and taking it back out: the served path is exchanged with
//! the new folder in one `renameat2(RENAME_EXCHANGE)` call, so a reader (the daemon, a
//! reload) sees the old bundle or the new one and never a half-moved folder; the one it
//! replaced is kept at `<bundle>.previous` for [`rollback`]. The new bundle's files and folder
//! are synced before the exchange and each rename's folder after it, so a power cut leaves the
//! old bundle or the whole new one in service, never names whose contents did not reach the
//! disk.

use std::io;
use std::path::{Path, PathBuf};

use super::{Bundle, BundleError};

/// What went wrong installing or rolling back. Each message names the paths and what to do.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The bundle to put in service does not load; nothing was moved.
    #[error("{path}: not put in service, it does not load: {source}")]
    Invalid {
        /// The bundle that was to go in.
        path: PathBuf,
        /// Why it does not load.
        source: BundleError,
    },
    /// There is no `<bundle>.previous` to go back to.
    #[error(
        "{bundle}: no previous bundle at {previous}; a rollback needs the one an install replaced (`vigil-train retrain --install` keeps it there)"
    )]
    NoPrevious {
        /// The served path.
        bundle: PathBuf,
        /// Where the previous one would be.
        previous: PathBuf,
    },
    /// The two paths are the same.
    #[error("{0}: the new bundle is the served one; write the new bundle to another folder beside it")]
    SamePath(PathBuf),
    /// The two paths are on different file systems, which a rename cannot span.
    #[error(
        "{from} and {to} are on different file systems, so they cannot be swapped atomically; write the new bundle beside the served one (the default `<bundle>.next` is)"
    )]
    CrossDevice {
        /// One side.
        from: PathBuf,
        /// The other side.
        to: PathBuf,
    },
    /// A rename failed; the message says which, and what state things were left in.
    #[error("{what} ({from} -> {to}): {source}")]
    Io {
        /// The step, and what it left behind.
        what: &'static str,
        /// One side.
        from: PathBuf,
        /// The other side.
        to: PathBuf,
        /// The system error.
        source: io::Error,
    },
}

/// What an install or rollback did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Swapped {
    /// The served path, now holding the new bundle.
    pub bundle: PathBuf,
    /// Where the one it replaced went (`<bundle>.previous`), if there was one.
    pub previous: Option<PathBuf>,
}

/// `<bundle>.<suffix>`, beside it (so on its file system): `current` gives `current.previous`.
pub fn sibling(bundle: &Path, suffix: &str) -> PathBuf {
    let name = bundle.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "bundle".into());
    let mut name = name;
    name.push(".");
    name.push(suffix);
    bundle.with_file_name(name)
}

/// Where the bundle an install replaced is kept: `<bundle>.previous`.
pub fn previous_path(bundle: &Path) -> PathBuf {
    sibling(bundle, "previous")
}

/// Exchanges two existing paths (folders or files) atomically: after it, each name holds
/// what the other held. Linux only (`renameat2`, since 3.15).
pub fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let c = |p: &Path| {
            CString::new(p.as_os_str().as_bytes())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
        };
        let (ca, cb) = (c(a)?, c(b)?);
        // SAFETY: both are valid NUL-terminated strings that live across the call.
        let rc =
            unsafe { libc::renameat2(libc::AT_FDCWD, ca.as_ptr(), libc::AT_FDCWD, cb.as_ptr(), libc::RENAME_EXCHANGE) };
        if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (a, b);
        Err(io::Error::new(io::ErrorKind::Unsupported, "an atomic exchange of two paths needs Linux (renameat2)"))
    }
}

fn io_error(what: &'static str, from: &Path, to: &Path, source: io::Error) -> InstallError {
    if source.raw_os_error() == Some(libc::EXDEV) {
        return InstallError::CrossDevice { from: from.to_path_buf(), to: to.to_path_buf() };
    }
    InstallError::Io { what, from: from.to_path_buf(), to: to.to_path_buf(), source }
}

fn exists(p: &Path) -> bool {
    p.symlink_metadata().is_ok()
}

/// The steps of an [`install_observed`], each reported once done: a kill between any two
/// leaves the served path holding the old bundle or the new one, whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The new bundle's files and folder are on disk (synced), so the exchange cannot put in
    /// service a name whose contents a power cut would lose.
    Synced,
    /// The served path holds the new bundle (the exchange, and the folder holding it, synced).
    Exchanged,
    /// The replaced bundle is at `<bundle>.previous`.
    PreviousKept,
    /// The bundle before the previous one was removed.
    OlderRemoved,
}

/// Puts the bundle at `new` in service at `bundle`: checks that it loads, exchanges the two
/// atomically, then keeps the replaced one at `<bundle>.previous` (an older previous is
/// removed). `new` is gone afterwards. When `bundle` does not exist yet, `new` is renamed to
/// it. Nothing is moved when `new` does not load or the exchange fails.
pub fn install(new: &Path, bundle: &Path) -> Result<Swapped, InstallError> {
    install_observed(new, bundle, &mut |_| {})
}

/// [`install`], telling `observe` each [`Step`] once it is done (a journal, or a test that
/// stops there as a kill would).
pub fn install_observed(new: &Path, bundle: &Path, observe: &mut dyn FnMut(Step)) -> Result<Swapped, InstallError> {
    Bundle::load(new).map_err(|source| InstallError::Invalid { path: new.to_path_buf(), source })?;
    if same_entry(new, bundle) {
        return Err(InstallError::SamePath(bundle.to_path_buf()));
    }
    // Without this, a power cut after the exchange can leave the served name pointing at
    // files whose contents never reached the disk (an empty `model.onnx`).
    sync_all(new).map_err(|e| io_error("syncing the new bundle to disk failed; nothing was moved", new, bundle, e))?;
    observe(Step::Synced);
    if !exists(bundle) {
        std::fs::rename(new, bundle)
            .map_err(|e| io_error("putting the new bundle in place failed; nothing was moved", new, bundle, e))?;
        crate::fsio::sync_parent(bundle);
        observe(Step::Exchanged);
        return Ok(Swapped { bundle: bundle.to_path_buf(), previous: None });
    }
    exchange(new, bundle).map_err(|e| {
        io_error("exchanging the new bundle with the served one failed; nothing was moved", new, bundle, e)
    })?;
    crate::fsio::sync_parent(bundle);
    crate::fsio::sync_parent(new);
    observe(Step::Exchanged);
    // `new` now names the replaced bundle; keep it as the previous one.
    let previous = keep_previous_observed(new, bundle, observe)?;
    Ok(Swapped { bundle: bundle.to_path_buf(), previous: Some(previous) })
}

/// Keeps `replaced` (the bundle an exchange took out of service at `bundle`) as
/// `<bundle>.previous`, removing an older previous; for an install that was cut short after
/// its exchange. Returns the previous path.
pub fn keep_previous(replaced: &Path, bundle: &Path) -> Result<PathBuf, InstallError> {
    keep_previous_observed(replaced, bundle, &mut |_| {})
}

fn keep_previous_observed(
    replaced: &Path,
    bundle: &Path,
    observe: &mut dyn FnMut(Step),
) -> Result<PathBuf, InstallError> {
    let previous = previous_path(bundle);
    let failed =
        "the new bundle is in service, but keeping the replaced one as previous failed; it is still at the first path";
    if exists(&previous) {
        // Exchanged too, so `.previous` always names a whole bundle; the older one it held
        // ends up at `replaced`, to be removed.
        exchange(replaced, &previous).map_err(|e| io_error(failed, replaced, &previous, e))?;
        crate::fsio::sync_parent(&previous);
        observe(Step::PreviousKept);
        if let Err(e) = remove(replaced) {
            tracing::warn!(
                "{}: the bundle before the previous one could not be removed ({e}); remove it by hand",
                replaced.display()
            );
        }
        crate::fsio::sync_parent(replaced);
        observe(Step::OlderRemoved);
    } else {
        std::fs::rename(replaced, &previous).map_err(|e| io_error(failed, replaced, &previous, e))?;
        crate::fsio::sync_parent(&previous);
        crate::fsio::sync_parent(replaced);
        observe(Step::PreviousKept);
    }
    Ok(previous)
}

/// Syncs a bundle folder (every file and the folder) or a one-file bundle (the file and the
/// folder holding it).
fn sync_all(p: &Path) -> io::Result<()> {
    if p.symlink_metadata()?.is_dir() {
        crate::fsio::sync_tree(p)
    } else {
        std::fs::File::open(p)?.sync_all()?;
        crate::fsio::sync_parent(p);
        Ok(())
    }
}

/// Goes back to `<bundle>.previous`: checks that it loads, then exchanges the two atomically,
/// so the bundle that was served becomes the previous one and a second rollback goes forward
/// again.
pub fn rollback(bundle: &Path) -> Result<Swapped, InstallError> {
    let previous = previous_path(bundle);
    if !exists(&previous) {
        return Err(InstallError::NoPrevious { bundle: bundle.to_path_buf(), previous });
    }
    Bundle::load(&previous).map_err(|source| InstallError::Invalid { path: previous.clone(), source })?;
    if !exists(bundle) {
        std::fs::rename(&previous, bundle).map_err(|e| {
            io_error("putting the previous bundle in place failed; nothing was moved", &previous, bundle, e)
        })?;
        crate::fsio::sync_parent(bundle);
        return Ok(Swapped { bundle: bundle.to_path_buf(), previous: None });
    }
    exchange(&previous, bundle).map_err(|e| {
        io_error("exchanging the previous bundle with the served one failed; nothing was moved", &previous, bundle, e)
    })?;
    crate::fsio::sync_parent(bundle);
    Ok(Swapped { bundle: bundle.to_path_buf(), previous: Some(previous) })
}

fn same_entry(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn remove(p: &Path) -> io::Result<()> {
    if p.symlink_metadata()?.is_dir() { std::fs::remove_dir_all(p) } else { std::fs::remove_file(p) }
}
