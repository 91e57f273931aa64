//! The keyed hold-out: which side of a camera's data set (training, or the part the retrain
//! gate judges on) each incoming file goes to, decided with the box's own secret so that
//! whoever publishes frames cannot choose it.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The folder of a camera's data set holding the files the retrain gate judges on
/// (`held-out/normal/`, `held-out/abnormal/`); `vigil-train retrain --dataset` reads it as
/// the recorded hold-out.
pub const HELD_OUT: &str = "held-out";

/// The share of incoming files held out.
pub const HOLDOUT_FRACTION: f64 = 0.2;

/// The box's secret that keys the hold-out, in `state_dir` (64 hex digits, mode 0600).
pub const KEY_FILE: &str = "dataset-key";

/// HMAC-SHA-256 (RFC 2104) of the concatenated `parts` under a 32-byte key.
pub(super) fn hmac_sha256(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// Whether the file `stem` of `camera` goes to the held-out side under `key`: a keyed rank
/// in `[0, 1)` below [`HOLDOUT_FRACTION`]. The camera is in the hash so that cameras sharing
/// frames do not share sides.
pub(super) fn held_out(key: &[u8; 32], camera: &str, stem: &str) -> bool {
    let mac = hmac_sha256(key, &[b"vigil-holdout\0", camera.as_bytes(), b"\0", stem.as_bytes()]);
    let bytes: [u8; 8] = mac[..8].try_into().expect("8 bytes");
    ((u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64) < HOLDOUT_FRACTION
}

/// Reads the key in `path`, or makes one (a file that is not 64 hex digits, as a write cut
/// short would leave, is replaced: the sides of the files already in the data set are
/// recorded by their folders, so a new key moves none of them).
pub(super) fn load_or_make_key(path: &Path) -> std::io::Result<[u8; 32]> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let text = text.trim();
            if let Some(key) = vigil_model::digest::unhex(text).and_then(|d| <[u8; 32]>::try_from(d).ok()) {
                // Only the daemon reads it.
                if let Ok(meta) = std::fs::metadata(path)
                    && meta.permissions().mode() & 0o077 != 0
                {
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
                }
                return Ok(key);
            }
            tracing::warn!("{}: not a key (64 hex digits); making a new one", path.display());
            std::fs::remove_file(path)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
    }
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).map_err(|e| std::io::Error::other(format!("the system's random source: {e}")))?;
    let hex = vigil_model::digest::hex(&key);
    // Made with its final mode, never readable by others even for a moment; a torn write is
    // caught by the check above at the next start.
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(format!("{hex}\n").as_bytes())?;
    f.sync_all()?;
    vigil_model::fsio::sync_parent(path);
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_keyed_hash_is_hmac_sha256() {
        // RFC 4231, test case 2 (the key "Jefe", zero-padded as HMAC pads every short key).
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        let mac = hmac_sha256(&key, &[b"what do ya want ", b"for nothing?"]);
        let hex = vigil_model::digest::hex(&mac);
        assert_eq!(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }
}
