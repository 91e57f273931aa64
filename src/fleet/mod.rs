//! Bundles rolled out over MQTT (`[fleet]`): `vigil publish` sends a signed bundle in chunks
//! on `<prefix>/<device>/<camera>/bundle/set`; each box stores the chunks in `state_dir`,
//! checks the key, the signed statement (target, time, the publisher's sequence) and the
//! SHA-256, unpacks next to the camera's bundle, test-runs it, swaps it in atomically (the
//! previous one kept for `vigil rollback`), and answers on `bundle/state`. Nothing
//! half-received, failing, replayed or cut short by a crash ever replaces a served bundle.

pub mod chunk;
pub mod config;
pub mod package;
pub mod record;

pub use chunk::{CLOCK_FLOOR_MS, CLOCK_SKEW, Chunk, MAX_CHUNK, MAX_PARTS, MIN_CHUNK, check_time, now_ms};
pub use config::FleetConfig;
use record::{Installed, JOURNAL, Journal, Record};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cameras::CameraConfig;
use vigil_model::bundle::install;
use vigil_model::engine::EngineConfig;
use vigil_model::fsio::write_atomic;

/// How often, at most, transfers are checked for staleness while chunks arrive.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// What became of a chunk.
#[derive(Debug, PartialEq)]
pub enum Received {
    /// Stored; more to come.
    Stored,
    /// The last chunk: the bundle is in service; the state to publish.
    Installed(serde_json::Value),
    /// A chunk of a transfer already installed (a publisher's retry): nothing to do.
    Done,
}

/// The steps of taking a complete transfer into service, each reported once done (see
/// [`Receiver::observe`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Every chunk is stored.
    Stored,
    /// The package is unpacked beside the served bundle.
    Unpacked,
    /// The unpacked bundle loaded and ran on the daemon's engine.
    Tested,
    /// The install is journalled.
    Journaled,
    /// A step of the atomic exchange ([`install::Step`]).
    Install(install::Step),
    /// The rollout is recorded (its sequence spent).
    Recorded,
    /// The transfer's files and the unpacked folder are removed.
    Cleaned,
}

/// A transfer being received, as kept in memory; on disk `<transfer>.json` holds its header
/// (written once), `<transfer>.part` its bytes and `<transfer>.got` the index of each chunk
/// stored (4 bytes each, appended), so what is written grows with what arrived.
#[derive(Debug)]
struct Progress {
    header: Chunk,
    got: Vec<bool>,
    count: usize,
}

#[derive(Default)]
struct State {
    /// Per camera, the transfer in progress: at most one each.
    transfers: HashMap<String, Progress>,
    /// Per camera, the header of the last transfer refused: its other chunks are dropped
    /// without a word. The whole header, not the transfer id, which is anyone's to copy: a
    /// forged chunk under an honest transfer's id must not get the honest chunks dropped.
    refused: HashMap<String, Chunk>,
    last_sweep: Option<Instant>,
}

/// Receives the bundles published to this box's cameras.
pub struct Receiver {
    config: FleetConfig,
    engine: vigil_model::engine::EngineConfig,
    device: String,
    dir: PathBuf,
    cameras: HashMap<String, CameraConfig>,
    state: Mutex<State>,
    observer: Option<Arc<dyn Fn(Step) + Send + Sync>>,
}

fn is_transfer_id(stem: &str) -> bool {
    (8..=64).contains(&stem.len()) && stem.bytes().all(|b| b.is_ascii_hexdigit())
}

fn transfer_files(dir: &Path, transfer: &str) -> [PathBuf; 3] {
    ["json", "part", "got"].map(|e| dir.join(format!("{transfer}.{e}")))
}

fn remove_transfer(dir: &Path, transfer: &str) {
    for f in transfer_files(dir, transfer) {
        let _ = std::fs::remove_file(f);
    }
}

/// The ids of the transfers kept in `dir`.
fn transfers_in(dir: &Path) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|f| {
            let name = f.file_name().to_string_lossy().into_owned();
            let (stem, ext) = name.rsplit_once('.')?;
            (is_transfer_id(stem) && matches!(ext, "json" | "part" | "got")).then(|| stem.to_owned())
        })
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

impl Receiver {
    /// The receiver of rollouts for `cameras` under `[fleet]`, keeping its state in
    /// `<state_dir>/fleet`. It first does what a restart must: finishes or forgets an install a
    /// crash cut short, removes unpacked leftovers and stale transfers, and takes up the
    /// transfers in progress.
    pub fn new(
        fleet: &FleetConfig,
        device: &str,
        state_dir: &Path,
        engine: &EngineConfig,
        cameras: &[CameraConfig],
    ) -> Receiver {
        let r = Receiver {
            config: fleet.clone(),
            engine: engine.clone(),
            device: device.to_owned(),
            dir: state_dir.join("fleet"),
            cameras: cameras.iter().map(|c| (c.id.clone(), c.clone())).collect(),
            state: Mutex::new(State::default()),
            observer: None,
        };
        let mut state = State::default();
        for c in r.cameras.values() {
            r.recover(c);
            remove_incoming(&c.bundle);
        }
        r.discard_stale(&mut state);
        for c in r.cameras.values() {
            if let Some(p) = r.resume(&r.dir.join(&c.id)) {
                state.transfers.insert(c.id.clone(), p);
            }
        }
        *r.state.lock().expect("fleet lock") = state;
        r
    }

    /// Calls `f` after each [`Step`] of an install: a test stops there as a kill would.
    pub fn observe(mut self, f: impl Fn(Step) + Send + Sync + 'static) -> Receiver {
        self.observer = Some(Arc::new(f));
        self
    }

    fn step(&self, s: Step) {
        if let Some(f) = &self.observer {
            f(s);
        }
    }

    /// Finishes or forgets the install journalled for camera `c`: installed when the served
    /// path holds the new bundle (then the replaced one is kept as previous if the cut came
    /// before that, and the rollout recorded), else forgotten, the old bundle still served.
    /// Returns whether it was installed.
    fn recover(&self, c: &CameraConfig) -> Option<bool> {
        let dir = self.dir.join(&c.id);
        let path = dir.join(JOURNAL);
        let bytes = std::fs::read(&path).ok()?;
        let journal: Journal = match serde_json::from_slice(&bytes) {
            Ok(j) => j,
            Err(e) => {
                // Written atomically, so only a hand-edited one gets here; what is served is
                // whole either way.
                tracing::error!("{}: {e}; moved aside (.corrupt)", path.display());
                let _ = std::fs::rename(&path, path.with_extension("json.corrupt"));
                return None;
            }
        };
        let installed = package::fingerprint(&c.bundle).ok().as_deref() == Some(journal.new_fingerprint.as_str());
        if installed {
            let replaced = journal.new.exists()
                && journal.old_fingerprint.is_some()
                && package::fingerprint(&journal.new).ok() == journal.old_fingerprint;
            if replaced && let Err(e) = install::keep_previous(&journal.new, &c.bundle) {
                tracing::warn!("camera {}: the replaced bundle could not be kept as previous: {e}", c.id);
            }
            if let Err(e) = Record::commit(&dir, &journal.installed) {
                tracing::error!("camera {}: recording rollout {}: {e}", c.id, journal.installed.sequence);
            }
            remove_transfer(&dir, &journal.installed.transfer);
            tracing::warn!(
                "camera {}: the install of rollout {} (transfer {}) was cut short after the bundle went in service; finished",
                c.id,
                journal.installed.sequence,
                journal.installed.transfer
            );
        } else {
            tracing::warn!(
                "camera {}: the install of rollout {} (transfer {}) was cut short before the exchange; the bundle served before stays",
                c.id,
                journal.installed.sequence,
                journal.installed.transfer
            );
        }
        let _ = remove_path(&journal.incoming);
        let _ = std::fs::remove_file(&path);
        vigil_model::fsio::sync_dir(&dir);
        Some(installed)
    }

    /// The transfer kept in `dir`, as a restart takes it up; others (a crash while one
    /// replaced another) and damaged ones are removed.
    fn resume(&self, dir: &Path) -> Option<Progress> {
        let mut best: Option<Progress> = None;
        for id in transfers_in(dir) {
            let [json, _, got] = transfer_files(dir, &id);
            let header = std::fs::read(&json).ok().and_then(|b| serde_json::from_slice::<Chunk>(&b).ok());
            let Some(header) = header.filter(|h| h.transfer == id && h.format == package::FORMAT) else {
                tracing::warn!("{}: an unreadable bundle transfer is discarded", json.display());
                remove_transfer(dir, &id);
                continue;
            };
            let mut p = Progress { got: vec![false; header.parts as usize], count: 0, header };
            // A torn last append leaves a partial index: ignored, that chunk comes again.
            for idx in std::fs::read(&got).unwrap_or_default().chunks_exact(4) {
                let i = u32::from_le_bytes(idx.try_into().expect("4 bytes")) as usize;
                if i < p.got.len() && !p.got[i] {
                    p.got[i] = true;
                    p.count += 1;
                }
            }
            match &best {
                Some(b) if b.header.sequence >= p.header.sequence => remove_transfer(dir, &id),
                _ => {
                    if let Some(b) = best.replace(p) {
                        remove_transfer(dir, &b.header.transfer);
                    }
                }
            }
        }
        best
    }

    /// Removes the transfers with no new chunk for `fleet.transfer_timeout`.
    fn discard_stale(&self, state: &mut State) {
        state.last_sweep = Some(Instant::now());
        for c in self.cameras.values() {
            let dir = self.dir.join(&c.id);
            for id in transfers_in(&dir) {
                let newest = transfer_files(&dir, &id)
                    .iter()
                    .filter_map(|f| f.metadata().and_then(|m| m.modified()).ok())
                    .filter_map(|t| t.elapsed().ok())
                    .min();
                if newest.is_some_and(|age| age > self.config.transfer_timeout) {
                    tracing::warn!(
                        "camera {}: bundle transfer {id} had no chunk for {:?}: discarded",
                        c.id,
                        self.config.transfer_timeout
                    );
                    remove_transfer(&dir, &id);
                    if state.transfers.get(&c.id).is_some_and(|p| p.header.transfer == id) {
                        state.transfers.remove(&c.id);
                    }
                }
            }
        }
    }

    /// Handles one message on `<camera>/bundle/set`: stores the chunk and, with the last one,
    /// checks and installs the bundle. An error names what was wrong; nothing was installed.
    /// Nothing here reads the served bundle unless a complete transfer is installed.
    pub fn receive(&self, camera: &str, payload: &[u8]) -> Result<Received, String> {
        let c = self.cameras.get(camera).ok_or_else(|| {
            format!("unknown camera `{}`: this box has {}", camera.escape_default(), self.camera_list())
        })?;
        let (header, data) = Chunk::parse(payload)?;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.refused.get(camera).is_some_and(|r| r.same_transfer(&header)) {
            return Ok(Received::Done);
        }
        if state.last_sweep.is_none_or(|t| t.elapsed() > SWEEP_EVERY) {
            self.discard_stale(&mut state);
        }
        let result = self.store(&mut state, c, &header, data);
        if result.is_err() {
            state.refused.insert(camera.to_owned(), header);
        }
        result
    }

    /// The checks of the signed statement: format, target, size, key, signature, time.
    /// Returns the key in its canonical text.
    fn admit(&self, c: &CameraConfig, h: &Chunk) -> Result<String, String> {
        if h.format == 1 {
            return Err(format!(
                "signed in format 1 by an older `vigil publish`: that signature covers only the package's SHA-256 and size, so whoever saw the rollout could replay it on any box at any time; publish the bundle again with `vigil publish` of vigil {} or later (format {}, which also signs the target, the time and a sequence)",
                env!("CARGO_PKG_VERSION"),
                package::FORMAT
            ));
        }
        if h.format != package::FORMAT {
            return Err(format!(
                "signed in format {}, which this vigil ({}) does not know: upgrade vigil on this box",
                h.format,
                env!("CARGO_PKG_VERSION")
            ));
        }
        if h.camera != c.id {
            return Err(format!(
                "signed for camera `{}`, received on camera {}'s topic: ignored",
                h.camera.escape_default(),
                c.id
            ));
        }
        let devices = globset::Glob::new(&h.devices)
            .map_err(|e| format!("the signed device pattern `{}`: {e}", h.devices.escape_default()))?;
        if !devices.compile_matcher().is_match(&self.device) {
            return Err(format!(
                "signed for devices `{}`, and this box is `{}`: ignored",
                h.devices.escape_default(),
                self.device
            ));
        }
        if h.size > self.config.max_bytes {
            return Err(format!("the bundle has {} bytes, over fleet.max_bytes ({})", h.size, self.config.max_bytes));
        }
        let key = package::parse_public_key(&h.key)?;
        if !self.config.trusted_keys.iter().any(|k| package::parse_public_key(k).is_ok_and(|t| t == key)) {
            return Err("signed by a key that is not in fleet.trusted_keys; add its public key there, or sign with a trusted one".into());
        }
        package::verify(&key, &h.statement(), &h.signature)?;
        check_time(h.created, now_ms())?;
        Ok(package::public_key_text(&key))
    }

    fn store(&self, state: &mut State, c: &CameraConfig, header: &Chunk, data: &[u8]) -> Result<Received, String> {
        let key = self.admit(c, header)?;
        let dir = self.dir.join(&c.id);
        let record = Record::read(&dir);
        if record.last.as_ref().is_some_and(|l| l.key == key && l.transfer == header.transfer) {
            return Ok(Received::Done);
        }
        record.admits(header, &key, &c.id)?;
        let [json, part_file, got_file] = transfer_files(&dir, &header.transfer);
        match state.transfers.get(&c.id) {
            Some(p) if p.header.transfer == header.transfer => {
                if !p.header.same_transfer(header) {
                    return Err(format!(
                        "chunk {} does not belong to transfer {} as begun (other bundle or key)",
                        header.part, header.transfer
                    ));
                }
            }
            Some(p) if p.header.sequence >= header.sequence => {
                return Err(format!(
                    "transfer {} (rollout {}) is not newer than transfer {} (rollout {}), which is in progress: ignored",
                    header.transfer, header.sequence, p.header.transfer, p.header.sequence
                ));
            }
            other => {
                // A new transfer: the one in progress for this camera, if any, is older, given
                // up by its publisher.
                if let Some(old) = other.map(|p| p.header.transfer.clone()) {
                    tracing::info!(
                        "camera {}: unfinished bundle transfer {old} is replaced by the newer {}",
                        c.id,
                        header.transfer
                    );
                    remove_transfer(&dir, &old);
                    state.transfers.remove(&c.id);
                }
                std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                let mut first = header.clone();
                first.part = 0;
                write_atomic(&json, &serde_json::to_vec(&first).expect("header"))
                    .map_err(|e| format!("{}: {e}", json.display()))?;
                state.transfers.insert(
                    c.id.clone(),
                    Progress { header: first, got: vec![false; header.parts as usize], count: 0 },
                );
            }
        }
        let p = state.transfers.get_mut(&c.id).expect("inserted above");
        if !p.got[header.part as usize] {
            write_at(&part_file, header.part as u64 * header.chunk, data)
                .map_err(|e| format!("{}: {e}", part_file.display()))?;
            append(&got_file, &header.part.to_le_bytes()).map_err(|e| format!("{}: {e}", got_file.display()))?;
            p.got[header.part as usize] = true;
            p.count += 1;
        }
        if p.count < p.got.len() {
            return Ok(Received::Stored);
        }
        self.step(Step::Stored);
        let result = self.install(c, header, &key, &part_file, &dir);
        state.transfers.remove(&c.id);
        remove_transfer(&dir, &header.transfer);
        self.step(Step::Cleaned);
        result.map(Received::Installed)
    }

    fn camera_list(&self) -> String {
        let mut ids: Vec<&str> = self.cameras.keys().map(String::as_str).collect();
        ids.sort();
        ids.join(", ")
    }

    /// Checks the whole package, unpacks it beside the camera's bundle, test-runs it on the
    /// daemon's engine, journals the install and swaps it in, then records the rollout.
    fn install(
        &self,
        camera: &CameraConfig,
        header: &Chunk,
        key: &str,
        part: &Path,
        dir: &Path,
    ) -> Result<serde_json::Value, String> {
        let bytes = std::fs::read(part).map_err(|e| format!("{}: {e}", part.display()))?;
        let sha = vigil_model::digest::sha256_hex(&bytes);
        if sha != header.sha256 || bytes.len() as u64 != header.size {
            return Err(format!(
                "the received bundle's SHA-256 is {sha}, not the signed {}: corrupted on the way; publish it again",
                header.sha256
            ));
        }
        let incoming = install::sibling(&camera.bundle, &format!("incoming-{}", header.transfer));
        let _ = remove_path(&incoming);
        let installed = Installed {
            key: key.to_owned(),
            transfer: header.transfer.clone(),
            sequence: header.sequence,
            created: header.created,
            name: header.name.clone(),
            version: header.version,
            rollback: header.rollback,
        };
        let journal = dir.join(JOURNAL);
        let mut journaled = false;
        let result = (|| {
            let new = package::unpack(&bytes, &incoming)?;
            drop(bytes);
            self.step(Step::Unpacked);
            if new.is_dir() != camera.bundle.is_dir() {
                return Err(format!(
                    "camera {} serves a bundle {}, the published one is {}: publish the same kind",
                    camera.id,
                    if camera.bundle.is_dir() { "folder" } else { "file" },
                    if new.is_dir() { "a folder" } else { "one file" }
                ));
            }
            let model = crate::scoring::Model::load(&new, &self.engine)
                .map_err(|e| format!("the bundle does not load or run: {e:#}"))?;
            camera.class_fits(&model)?;
            let m = &model.bundle.manifest;
            if m.name != header.name || m.version != header.version {
                return Err(format!(
                    "the package holds {} version {}, but its signature says {} version {}: publish it again with `vigil publish`",
                    m.name, m.version, header.name, header.version
                ));
            }
            let state = serde_json::json!({
                "camera": camera.id, "name": m.name, "version": m.version, "sha256": model.bundle.model_sha256,
            });
            drop(model);
            self.step(Step::Tested);
            let entry = Journal {
                installed: installed.clone(),
                new: new.clone(),
                incoming: incoming.clone(),
                new_fingerprint: package::fingerprint(&new).map_err(|e| format!("{}: {e}", new.display()))?,
                old_fingerprint: package::fingerprint(&camera.bundle).ok(),
            };
            write_atomic(&journal, &serde_json::to_vec_pretty(&entry).expect("journal"))
                .map_err(|e| format!("{}: {e}", journal.display()))?;
            journaled = true;
            self.step(Step::Journaled);
            install::install_observed(&new, &camera.bundle, &mut |s| self.step(Step::Install(s)))
                .map_err(|e| e.to_string())?;
            Record::commit(dir, &installed)?;
            self.step(Step::Recorded);
            let _ = std::fs::remove_file(&journal);
            Ok(state)
        })();
        let result = match result {
            // Failed after the journal: the recovery a restart runs tells what is served.
            Err(e) if journaled => match self.recover(camera) {
                Some(true) => {
                    tracing::warn!("camera {}: {e}; the new bundle is in service all the same", camera.id);
                    let b = vigil_model::bundle::Bundle::load(&camera.bundle).map_err(|e| e.to_string())?;
                    Ok(serde_json::json!({
                        "camera": camera.id, "name": b.manifest.name, "version": b.manifest.version, "sha256": b.model_sha256,
                    }))
                }
                _ => Err(e),
            },
            r => r,
        };
        let _ = remove_path(&incoming);
        result
    }
}

/// Removes `<bundle>.incoming-*` beside `bundle`: unpacked by an install that a crash cut
/// short before its journal (so never in service).
fn remove_incoming(bundle: &Path) {
    let (Some(parent), Some(name)) = (bundle.parent(), bundle.file_name()) else { return };
    let prefix = format!("{}.incoming-", name.to_string_lossy());
    let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
    for e in std::fs::read_dir(parent).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            tracing::warn!("{}: left by an install cut short; removed", e.path().display());
            let _ = remove_path(&e.path());
        }
    }
}

fn remove_path(p: &Path) -> std::io::Result<()> {
    if p.symlink_metadata()?.is_dir() { std::fs::remove_dir_all(p) } else { std::fs::remove_file(p) }
}

fn write_at(path: &Path, offset: u64, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path)?;
    f.write_all_at(data, offset)?;
    f.sync_data()
}

/// Appends `bytes` to `path` and syncs it: the chunk's bytes are on disk before its index is.
fn append(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    f.write_all(bytes)?;
    f.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(size: u64, chunk: u64) -> Chunk {
        Chunk {
            format: package::FORMAT,
            transfer: "0123456789abcdef".into(),
            part: 0,
            parts: size.div_ceil(chunk) as u32,
            chunk,
            size,
            sha256: "0".repeat(64),
            signature: String::new(),
            key: String::new(),
            created: 0,
            devices: "*".into(),
            camera: "cam1".into(),
            name: "surface".into(),
            version: 3,
            sequence: 10,
            rollback: false,
        }
    }

    fn message(h: &Chunk, data: usize) -> Vec<u8> {
        let mut m = serde_json::to_vec(h).unwrap();
        m.push(b'\n');
        m.extend(std::iter::repeat_n(7u8, data));
        m
    }

    #[test]
    fn chunk_sizes_and_counts_are_bounded() {
        let ok = header(100_000, MIN_CHUNK);
        assert!(Chunk::parse(&message(&ok, MIN_CHUNK as usize)).is_ok());
        // 1-byte chunks: one message, one acknowledgement and one write per byte.
        let e = Chunk::parse(&message(&header(100_000, 1), 1)).unwrap_err();
        assert!(e.contains("chunks of 1 bytes: under the minimum of 64 KiB"), "{e}");
        let e = Chunk::parse(&message(&header(100 << 20, 32 << 20), 0)).unwrap_err();
        assert!(e.contains("over the maximum of 16384 KiB"), "{e}");
        let e = Chunk::parse(&message(&header((MAX_PARTS + 1) * MIN_CHUNK, MIN_CHUNK), 0)).unwrap_err();
        assert!(e.contains("over the limit of 16384"), "{e}");
        let e = Chunk::parse(&message(&header(0, MIN_CHUNK), 0)).unwrap_err();
        assert!(e.contains("empty package"), "{e}");
        // A small package is one chunk shorter than the chunk size.
        assert!(Chunk::parse(&message(&header(10, MIN_CHUNK), 10)).is_ok());
        let mut wrong = header(100_000, MIN_CHUNK);
        wrong.parts = 3;
        assert!(Chunk::parse(&message(&wrong, MIN_CHUNK as usize)).unwrap_err().contains("does not fit"));
        // A header of an older publisher parses, as format 1, for the box to refuse it by name.
        let old = br#"{"transfer":"0123456789abcdef","part":0,"parts":1,"chunk":262144,"size":3,"sha256":"0000000000000000000000000000000000000000000000000000000000000000","signature":"","key":"","created":1}"#;
        let (h, _) = Chunk::parse(&[&old[..], b"\nabc"].concat()).unwrap();
        assert_eq!((h.format, h.sequence), (1, 0));
    }

    #[test]
    fn a_time_in_the_future_or_an_unset_clock_is_refused_by_name() {
        let now = CLOCK_FLOOR_MS + 86_400_000;
        assert_eq!(check_time(now, now), Ok(()));
        assert_eq!(check_time(now + CLOCK_SKEW.as_millis() as u64, now), Ok(()));
        assert!(check_time(0, now).is_ok(), "an old transfer is ordered by its sequence, not refused by its time");
        let e = check_time(u64::MAX, now).unwrap_err();
        assert!(e.contains("later than this box's clock"), "{e}");
        let e = check_time(now, 5_000).unwrap_err();
        assert!(e.contains("clock is not set") && e.contains("1970-01-01"), "{e}");
    }

    #[test]
    fn rollouts_are_ordered_by_sequence_per_key_and_a_downgrade_needs_the_rollback_flag() {
        let mut r = Record::default();
        let h = header(10, MIN_CHUNK);
        assert_eq!(r.admits(&h, "k", "cam1"), Ok(()), "nothing installed yet: any sequence");
        let installed = |h: &Chunk| Installed {
            key: "k".into(),
            transfer: h.transfer.clone(),
            sequence: h.sequence,
            created: 0,
            name: h.name.clone(),
            version: h.version,
            rollback: h.rollback,
        };
        r.sequences.insert("k".into(), 10);
        r.last = Some(installed(&h));
        assert!(r.admits(&h, "k", "cam1").unwrap_err().contains("not newer than rollout 10"));
        // Another key has its own sequence.
        assert_eq!(r.admits(&h, "other", "cam1"), Ok(()));
        let newer = Chunk { sequence: 11, version: 3, ..h.clone() };
        assert_eq!(r.admits(&newer, "k", "cam1"), Ok(()), "the same version again is no downgrade");
        let down = Chunk { sequence: 11, version: 2, ..h.clone() };
        assert!(r.admits(&down, "k", "cam1").unwrap_err().contains("--rollback"));
        let rollback = Chunk { rollback: true, ..down.clone() };
        assert_eq!(r.admits(&rollback, "k", "cam1"), Ok(()));
        // Once taken, the rollback's sequence is spent.
        r.sequences.insert("k".into(), 11);
        r.last = Some(installed(&rollback));
        assert!(r.admits(&rollback, "k", "cam1").unwrap_err().contains("not newer"));
        // Another bundle name is another line of versions.
        let other = Chunk { sequence: 12, name: "other".into(), version: 1, ..h.clone() };
        assert_eq!(r.admits(&other, "k", "cam1"), Ok(()));
    }
}
