//! What each camera took from the fleet (`installed.json`), and the journal of an install
//! under way (`installing.json`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::chunk::Chunk;
use vigil_model::fsio::write_atomic;

/// Per camera: what was installed from which key (`installed.json`).
pub(super) const RECORD: &str = "installed.json";
/// Per camera: the install under way, for the recovery after a crash (`installing.json`).
pub(super) const JOURNAL: &str = "installing.json";

/// One rollout installed on a camera.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Installed {
    pub(super) key: String,
    pub(super) transfer: String,
    pub(super) sequence: u64,
    pub(super) created: u64,
    pub(super) name: String,
    pub(super) version: u32,
    pub(super) rollback: bool,
}

/// What a camera took from the fleet (`installed.json`): per signing key the highest sequence
/// installed, and the last rollout, whose version a rollout must not go below unless signed
/// as a rollback. Local changes (`vigil rollback`, `vigil-train retrain --install`) are not
/// recorded: they neither block nor unlock central rollouts.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Record {
    pub(super) sequences: BTreeMap<String, u64>,
    pub(super) last: Option<Installed>,
}

impl Record {
    /// The record in `dir`; one that cannot be read is moved aside (`.corrupt`) and logged.
    pub(super) fn read(dir: &Path) -> Record {
        let path = dir.join(RECORD);
        let Ok(bytes) = std::fs::read(&path) else { return Record::default() };
        serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            let aside = path.with_extension("json.corrupt");
            tracing::error!(
                "{}: {e}; moved to {} and starting afresh: the next signed rollout of any sequence is taken",
                path.display(),
                aside.display()
            );
            let _ = std::fs::rename(&path, aside);
            Record::default()
        })
    }

    pub(super) fn commit(dir: &Path, installed: &Installed) -> Result<(), String> {
        let mut record = Record::read(dir);
        let seq = record.sequences.entry(installed.key.clone()).or_default();
        *seq = (*seq).max(installed.sequence);
        record.last = Some(installed.clone());
        let path = dir.join(RECORD);
        write_atomic(&path, &serde_json::to_vec_pretty(&record).expect("record")).map_err(|e| e.to_string())?;
        // The record of vigil before sequences ("<transfer> <created>"): replaced.
        let _ = std::fs::remove_file(dir.join("installed"));
        Ok(())
    }

    /// Whether a rollout comes in order: a sequence above every one installed from its key,
    /// and no older version than the last rollout's (of the same bundle name) unless signed
    /// as a rollback. A signed rollback cannot be replayed: its sequence is spent once taken.
    pub(super) fn admits(&self, h: &Chunk, key: &str, camera: &str) -> Result<(), String> {
        if let Some(&last) = self.sequences.get(key)
            && h.sequence <= last
        {
            return Err(format!(
                "rollout {} of this key is not newer than rollout {last}, installed on camera {camera} already: an old rollout sent again (a replay, or a broker's late redelivery); nothing changed",
                h.sequence
            ));
        }
        if let Some(last) = &self.last
            && last.name == h.name
            && h.version < last.version
            && !h.rollback
        {
            return Err(format!(
                "{} version {} is older than version {} rolled out last (rollout {}): to go back on purpose publish it with `vigil publish --rollback`; nothing changed",
                h.name, h.version, last.version, last.sequence
            ));
        }
        Ok(())
    }
}

/// An install under way (`installing.json`), written before the exchange: after a crash the
/// next start finds which bundle the served path holds and finishes or forgets the install.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Journal {
    pub(super) installed: Installed,
    /// The unpacked bundle's path (the folder, or the file in it).
    pub(super) new: PathBuf,
    /// The folder unpacked into, removed afterwards.
    pub(super) incoming: PathBuf,
    /// [`package::fingerprint`] of the new bundle and of the one it replaces.
    pub(super) new_fingerprint: String,
    pub(super) old_fingerprint: Option<String>,
}
