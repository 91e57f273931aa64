//! Durable file replacement: the one write-then-rename every writer of state, bundles and
//! data sets uses, so that after a crash or power cut a reader finds the old file or the whole
//! new one, never an empty or half-written one.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Replaces `path` by `bytes`: written to a temporary file beside it, synced, renamed over
/// `path`, then the folder synced so the rename itself survives a power cut.
///
/// The folder's sync is best effort: some file systems refuse to sync a directory, and the
/// file's contents are already on disk by then.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = temporary(path);
    let written = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        // A full disk must not also leave a stray half file taking the space.
        let _ = std::fs::remove_file(&tmp);
        return Err(io::Error::new(e.kind(), format!("writing {}: {e}", path.display())));
    }
    sync_dir(parent(path));
    Ok(())
}

/// Syncs the folder that holds `path`'s entry (best effort, see [`write_atomic`]).
pub fn sync_parent(path: &Path) {
    sync_dir(parent(path));
}

/// Syncs a folder's entries (best effort).
pub fn sync_dir(dir: &Path) {
    let _ = File::open(dir).and_then(|d| d.sync_all());
}

/// Syncs every file under `dir` and every folder, `dir` included, so that a tree about to be
/// renamed into service is complete on disk before its name is.
pub fn sync_tree(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            sync_tree(&entry.path())?;
        } else if kind.is_file() {
            File::open(entry.path())?.sync_all()?;
        }
    }
    sync_dir(dir);
    Ok(())
}

fn parent(path: &Path) -> &Path {
    path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// `name.<pid>.tmp` beside `path`: two processes replacing the same file never share one.
fn temporary(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".{}.tmp", std::process::id()));
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_files_and_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("vigil-fsio-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("state.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")], "no temporary left");
        let missing = dir.join("no-such-folder").join("x.json");
        let e = write_atomic(&missing, b"x").unwrap_err();
        assert!(e.to_string().contains("x.json"), "{e}");
        sync_tree(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
