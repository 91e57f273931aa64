//! The camera's growing data set: each alert's clean frame kept beside it (with the alert's
//! JSON, newest `frames_keep` per camera), an operator's verdict copying that frame into
//! `<state_dir>/dataset/<camera>/{normal,abnormal}/`, and a sample of frames scored normal.
//! `vigil-train retrain --dataset` reads that folder.
//!
//! About one file in five goes to `<camera>/held-out/{normal,abnormal}/` instead: the files
//! the retrain gate judges on and no retrain trains on. The side is decided once, when a file
//! comes in, by a keyed hash (HMAC-SHA-256 with the box's own secret, `<state_dir>/dataset-key`)
//! of its id, and recorded by the folder it is in: the frame's publisher, who controls the
//! frame and so its id, cannot choose the side, and the trainer reads the side instead of
//! computing it. Each verdict is recorded with where it came from in
//! `<camera>/verdicts.jsonl`.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

pub mod config;
pub mod holdout;

pub use config::DatasetConfig;
pub use holdout::{HELD_OUT, HOLDOUT_FRACTION, KEY_FILE};
use holdout::{held_out, load_or_make_key};

use crate::alert::Alert;
use crate::problem::valid_id;
use vigil_model::fsio::write_atomic;

/// An operator's verdict on an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The part was fine: the frame is a normal example.
    FalseAlarm,
    /// The part was defective: the frame is a confirmed defect.
    Confirmed,
}

impl Verdict {
    /// The data-set folder of this verdict.
    pub fn folder(self) -> &'static str {
        match self {
            Verdict::FalseAlarm => "normal",
            Verdict::Confirmed => "abnormal",
        }
    }

    /// The name used in payloads.
    pub fn name(self) -> &'static str {
        match self {
            Verdict::FalseAlarm => "false_alarm",
            Verdict::Confirmed => "confirmed",
        }
    }
}

/// Each camera's record of verdicts, one JSON object a line, in its data set's folder.
pub const VERDICT_LOG: &str = "verdicts.jsonl";

/// Past this size the verdict log is moved to `verdicts.jsonl.1` (replacing the older one),
/// so that a stream of verdicts cannot fill the disk.
const VERDICT_LOG_MAX: u64 = 1 << 20;

/// Where a verdict came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "via", rename_all = "snake_case")]
pub enum Source {
    /// The operator's page or its API, with the token; the client's address as the box saw it
    /// (behind a reverse proxy: the proxy's).
    Page {
        /// `ip:port` of the connection, when known.
        client: Option<String>,
    },
    /// A message on the camera's `feedback` topic. MQTT 3.1.1 does not tell a subscriber who
    /// published, so this is the topic and what the payload says about itself.
    Mqtt {
        /// The topic it came on.
        topic: String,
        /// The payload's own `by`, unchecked: whoever may publish there may write anything.
        #[serde(skip_serializing_if = "Option::is_none")]
        by: Option<String>,
    },
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Page { client } => write!(f, "page from {}", client.as_deref().unwrap_or("an unknown address")),
            Source::Mqtt { topic, by: Some(by) } => {
                write!(f, "MQTT {topic}, by \"{}\" (self-declared)", by.escape_default())
            }
            Source::Mqtt { topic, by: None } => write!(f, "MQTT {topic}"),
        }
    }
}

/// Why a verdict was not applied.
#[derive(Debug, thiserror::Error)]
pub enum VerdictError {
    /// Not an alert id vigil writes.
    #[error("`{0}` is not an alert id (26 characters, 0-9 and A-Z as in every alert's `id`)")]
    BadId(String),
    /// No clean frame kept for this alert.
    #[error(
        "unknown alert `{id}` on camera `{camera}`: no frame is kept for it (alerts older than the newest `dataset.frames_keep` are removed, and alerts of other cameras are not here)"
    )]
    Unknown {
        /// The camera asked.
        camera: String,
        /// The alert id.
        id: String,
    },
    /// The file system refused.
    #[error("{0}")]
    Io(String),
}

/// What a verdict did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The frame in the data set.
    pub file: PathBuf,
    /// False when the same verdict had been applied before (nothing changed).
    pub changed: bool,
    /// Whether the frame is on the held-out side.
    pub held_out: bool,
}

/// The data set and the kept alert frames of every camera.
#[derive(Debug)]
pub struct Dataset {
    frames: PathBuf,
    dataset: PathBuf,
    config: DatasetConfig,
    /// Frames scored normal since the last sample, per camera.
    since_sample: Mutex<HashMap<String, u32>>,
    /// One verdict at a time: the page and MQTT may give two at once on the same alert, and
    /// each moves what the other wrote.
    verdicts: Mutex<()>,
    /// Bytes kept free for the outbox (see [`Dataset::with_reserve`]).
    reserve: u64,
    /// `<state_dir>/dataset-key`.
    key_file: PathBuf,
    /// The hold-out key, once read or made.
    key: Mutex<Option<[u8; 32]>>,
    /// One camera's hold-out folder made (and an older data set sorted) at a time.
    layout: Mutex<()>,
}

/// Whether `id` has the shape of an alert id (a ULID in Crockford base32).
pub fn valid_alert_id(id: &str) -> bool {
    id.len() == 26 && id.bytes().all(|b| b.is_ascii_digit() || (b.is_ascii_uppercase() && !b"ILOU".contains(&b)))
}

/// The file extension of an encoded image.
fn extension(bytes: &[u8]) -> &'static str {
    match image::guess_format(bytes) {
        Ok(image::ImageFormat::Png) => "png",
        Ok(image::ImageFormat::Jpeg) => "jpg",
        Ok(image::ImageFormat::Bmp) => "bmp",
        Ok(image::ImageFormat::Tiff) => "tiff",
        _ => "img",
    }
}

/// Removes the oldest files of `folders` (together) whose names start with `prefix` (and end
/// with one of the image extensions), keeping the newest `keep` that fit in `max_bytes`; ids
/// sort by time, so the oldest are first by name.
fn prune(folders: &[PathBuf], prefix: &str, keep: usize, max_bytes: u64) {
    let mut ids: Vec<(String, u64, &Path)> = vec![];
    for folder in folders {
        let Ok(entries) = std::fs::read_dir(folder) else { continue };
        ids.extend(
            entries
                .filter_map(|e| {
                    let e = e.ok()?;
                    Some((e.file_name().into_string().ok()?, e.metadata().map_or(0, |m| m.len()), folder.as_path()))
                })
                .filter(|(n, _, _)| n.starts_with(prefix) && !n.ends_with(".json") && !n.ends_with(".tmp")),
        );
    }
    ids.sort();
    let sizes: Vec<u64> = ids.iter().map(|(_, s, _)| *s).collect();
    let first_kept = crate::space::first_kept(&sizes, keep, max_bytes);
    for (name, _, folder) in &ids[..first_kept] {
        let _ = std::fs::remove_file(folder.join(name));
        if let Some(stem) = Path::new(name).file_stem() {
            let _ = std::fs::remove_file(folder.join(stem).with_extension("json"));
        }
    }
}

/// One record of `verdicts.jsonl`.
#[derive(Serialize)]
struct VerdictRecord<'a> {
    time: String,
    id: &'a str,
    verdict: Verdict,
    /// The verdict it replaced, if any.
    previous: Option<Verdict>,
    held_out: bool,
    source: &'a Source,
}

/// Appends `line` to `path`, moving a log over [`VERDICT_LOG_MAX`] aside first.
fn append_log(path: &Path, line: &[u8]) -> std::io::Result<()> {
    if std::fs::metadata(path).is_ok_and(|m| m.len() > VERDICT_LOG_MAX) {
        std::fs::rename(path, path.with_extension("jsonl.1"))?;
    }
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    f.write_all(line)?;
    f.sync_data()
}

/// The image file of `id` in `folder` (any extension but `.json`), if there is one.
fn find(folder: &Path, id: &str) -> Option<PathBuf> {
    ["png", "jpg", "bmp", "tiff", "img"].iter().map(|e| folder.join(format!("{id}.{e}"))).find(|p| p.is_file())
}

impl Dataset {
    /// The data set under `state_dir`.
    pub fn new(state_dir: &Path, config: DatasetConfig) -> Dataset {
        Dataset {
            frames: state_dir.join("frames"),
            dataset: state_dir.join("dataset"),
            config,
            since_sample: Mutex::default(),
            verdicts: Mutex::default(),
            reserve: 0,
            key_file: state_dir.join(KEY_FILE),
            key: Mutex::default(),
            layout: Mutex::default(),
        }
    }

    /// Keeps `bytes` of free space on the state folder's file system for the outbox and the
    /// state files (`alerts.disk_reserve_mb`): nothing here is written below it.
    pub fn with_reserve(mut self, bytes: u64) -> Dataset {
        self.reserve = bytes;
        self
    }

    /// Refuses a write of `len` bytes that would go below the reserve.
    fn room_for(&self, len: usize) -> std::io::Result<()> {
        let dir = self.frames.parent().unwrap_or(&self.frames);
        if crate::space::may_write(dir, len as u64, self.reserve) {
            return Ok(());
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::StorageFull,
            format!(
                "the state folder {} has less than alerts.disk_reserve_mb free: kept for alerts, so frames are not kept until space is freed",
                dir.display()
            ),
        ))
    }

    /// The hold-out key, read or made at first use.
    fn key(&self) -> std::io::Result<[u8; 32]> {
        let mut key = self.key.lock().expect("key lock");
        if let Some(k) = *key {
            return Ok(k);
        }
        let k = load_or_make_key(&self.key_file)?;
        *key = Some(k);
        Ok(k)
    }

    /// Makes the camera's `held-out/` folder. A data set from before the hold-out was
    /// recorded has none: its files are sorted first, each by its keyed side, into a
    /// `held-out.partial` folder renamed into place once all are moved (an interrupted sort
    /// continues at the next call).
    fn ensure_layout(&self, camera: &str) -> std::io::Result<()> {
        let base = self.camera_dir(camera);
        let held = base.join(HELD_OUT);
        if held.is_dir() {
            return Ok(());
        }
        let _one = self.layout.lock().expect("layout lock");
        if held.is_dir() {
            return Ok(());
        }
        let partial = base.join(format!("{HELD_OUT}.partial"));
        std::fs::create_dir_all(&partial)?;
        let key = self.key()?;
        for kind in [Verdict::FalseAlarm.folder(), Verdict::Confirmed.folder()] {
            let Ok(entries) = std::fs::read_dir(base.join(kind)) else { continue };
            for entry in entries.flatten() {
                let path = entry.path();
                let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else { continue };
                if path.extension().is_some_and(|e| e == "tmp") || !held_out(&key, camera, stem) {
                    continue;
                }
                let to = partial.join(kind);
                std::fs::create_dir_all(&to)?;
                std::fs::rename(&path, to.join(entry.file_name()))?;
            }
        }
        std::fs::rename(&partial, &held)?;
        vigil_model::fsio::sync_dir(&base);
        Ok(())
    }

    /// The folder of the side `stem` goes to: the camera's data set or its `held-out/`.
    fn side(&self, camera: &str, stem: &str) -> std::io::Result<(PathBuf, bool)> {
        let base = self.camera_dir(camera);
        Ok(if held_out(&self.key()?, camera, stem) { (base.join(HELD_OUT), true) } else { (base, false) })
    }

    /// The data-set file of alert `id` in the `folder` of a verdict, on either side.
    fn find_either(&self, camera: &str, folder: &str, id: &str) -> Option<PathBuf> {
        let base = self.camera_dir(camera);
        find(&base.join(folder), id).or_else(|| find(&base.join(HELD_OUT).join(folder), id))
    }

    /// `<state_dir>/dataset/<camera>`.
    pub fn camera_dir(&self, camera: &str) -> PathBuf {
        self.dataset.join(camera)
    }

    /// Keeps an alert's clean frame and its JSON in `<state_dir>/frames/<camera>/`, so that a
    /// verdict can be given on it later (also after a restart).
    pub fn keep_alert(&self, alert: &Alert, frame: &[u8]) -> std::io::Result<()> {
        if self.config.frames_keep == 0 || !valid_id(&alert.camera) {
            return Ok(());
        }
        self.room_for(frame.len())?;
        let folder = self.frames.join(&alert.camera);
        std::fs::create_dir_all(&folder)?;
        write_atomic(&folder.join(format!("{}.{}", alert.id, extension(frame))), frame)?;
        let json = serde_json::to_vec(alert).expect("an alert serialises");
        write_atomic(&folder.join(format!("{}.json", alert.id)), &json)?;
        prune(&[folder], "", self.config.frames_keep, self.config.frames_max_mb.saturating_mul(1 << 20));
        Ok(())
    }

    /// The newest `n` alerts of `camera` whose frames are kept, newest first.
    pub fn recent_alerts(&self, camera: &str, n: usize) -> Vec<Alert> {
        let Ok(entries) = std::fs::read_dir(self.frames.join(camera)) else { return vec![] };
        let mut names: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        names.sort();
        names.iter().rev().filter_map(|p| serde_json::from_slice(&std::fs::read(p).ok()?).ok()).take(n).collect()
    }

    /// The kept clean frame of an alert.
    pub fn alert_frame(&self, camera: &str, id: &str) -> Option<PathBuf> {
        (valid_id(camera) && valid_alert_id(id)).then(|| find(&self.frames.join(camera), id)).flatten()
    }

    /// The verdict given on an alert so far.
    pub fn verdict_of(&self, camera: &str, id: &str) -> Option<Verdict> {
        if !valid_id(camera) || !valid_alert_id(id) {
            return None;
        }
        [Verdict::Confirmed, Verdict::FalseAlarm]
            .into_iter()
            .find(|v| self.find_either(camera, v.folder(), id).is_some())
    }

    /// Applies a verdict: the alert's clean frame is copied into the data set's folder of the
    /// verdict (and out of the other one, when the operator changed their mind), on the side
    /// of the hold-out its id falls on (a change of mind keeps the side the frame is on), and
    /// recorded with `source` in the camera's `verdicts.jsonl`. The same verdict again changes
    /// nothing.
    pub fn verdict(&self, camera: &str, id: &str, verdict: Verdict, source: &Source) -> Result<Applied, VerdictError> {
        let _one_at_a_time = self.verdicts.lock().expect("verdict lock");
        if !valid_alert_id(id) {
            return Err(VerdictError::BadId(id.escape_default().to_string()));
        }
        let unknown = || VerdictError::Unknown { camera: camera.escape_default().to_string(), id: id.to_owned() };
        if !valid_id(camera) {
            return Err(unknown());
        }
        let base = self.camera_dir(camera);
        let held_dir = base.join(HELD_OUT);
        let io = |e: std::io::Error, what: &Path| VerdictError::Io(format!("{}: {e}", what.display()));
        if base.is_dir() {
            // An older data set is sorted before anything is looked up in it.
            self.ensure_layout(camera).map_err(|e| io(e, &held_dir))?;
        }
        let other = match verdict {
            Verdict::FalseAlarm => Verdict::Confirmed,
            Verdict::Confirmed => Verdict::FalseAlarm,
        };
        if let Some(file) = self.find_either(camera, verdict.folder(), id) {
            let held_out = file.starts_with(&held_dir);
            return Ok(Applied { file, changed: false, held_out });
        }
        let kept = find(&self.frames.join(camera), id);
        let moved_from = self.find_either(camera, other.folder(), id);
        let from = kept.or(moved_from.clone()).ok_or_else(unknown)?;
        self.ensure_layout(camera).map_err(|e| io(e, &held_dir))?;
        // The side is the frame's for good: a change of mind moves it between the folders of
        // the side it is on.
        let (side, held_out) = match &moved_from {
            Some(old) => {
                let held = old.starts_with(&held_dir);
                (if held { held_dir.clone() } else { base.clone() }, held)
            }
            None => self.side(camera, id).map_err(|e| io(e, &self.key_file))?,
        };
        // Recorded before it takes effect: a verdict that cannot say where it came from is not
        // applied.
        let record = VerdictRecord {
            time: crate::alert::rfc3339(std::time::SystemTime::now()),
            id,
            verdict,
            previous: moved_from.as_ref().map(|_| other),
            held_out,
            source,
        };
        let mut line = serde_json::to_vec(&record).expect("a record serialises");
        line.push(b'\n');
        let log = base.join(VERDICT_LOG);
        append_log(&log, &line).map_err(|e| io(e, &log))?;
        let folder = side.join(verdict.folder());
        std::fs::create_dir_all(&folder).map_err(|e| io(e, &folder))?;
        let name = from.file_name().expect("a file name").to_owned();
        let file = folder.join(name);
        let bytes = std::fs::read(&from).map_err(|e| io(e, &from))?;
        self.room_for(bytes.len()).map_err(|e| io(e, &file))?;
        write_atomic(&file, &bytes).map_err(|e| io(e, &file))?;
        if let Some(old) = moved_from {
            std::fs::remove_file(&old).map_err(|e| io(e, &old))?;
        }
        Ok(Applied { file, changed: true, held_out })
    }

    /// Counts a frame scored normal and, every `sample_normal`-th, copies it into the data
    /// set's `normal/` folder (or its held-out side's) under the id `id` makes (asked only
    /// when a sample is due); returns the file written.
    pub fn sample(&self, camera: &str, id: impl FnOnce() -> String, frame: &[u8]) -> std::io::Result<Option<PathBuf>> {
        let every = self.config.sample_normal;
        if every == 0 || !valid_id(camera) {
            return Ok(None);
        }
        {
            let mut since = self.since_sample.lock().expect("sample lock");
            let n = since.entry(camera.to_owned()).or_default();
            *n += 1;
            if *n < every {
                return Ok(None);
            }
            *n = 0;
        }
        self.room_for(frame.len())?;
        self.ensure_layout(camera)?;
        let stem = format!("sample-{}", id());
        let (side, _) = self.side(camera, &stem)?;
        let folder = side.join("normal");
        std::fs::create_dir_all(&folder)?;
        let file = folder.join(format!("{stem}.{}", extension(frame)));
        write_atomic(&file, frame)?;
        let base = self.camera_dir(camera);
        prune(
            &[base.join("normal"), base.join(HELD_OUT).join("normal")],
            "sample-",
            self.config.sample_keep,
            self.config.sample_max_mb.saturating_mul(1 << 20),
        );
        Ok(Some(file))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::PermissionsExt;

    const ID: &str = "01KB0000000000000000000000";

    fn alert(camera: &str, id: &str) -> Alert {
        serde_json::from_value(serde_json::json!({
            "schema": "vigil.alert/1", "id": id, "device": "d", "camera": camera, "source": "s",
            "frame_time": "t", "detected_at": "t", "score": 1.0, "normalized_score": 0.9, "threshold": 0.5,
            "model": {"name": "m", "version": 1, "sha256": "x"}, "region": null, "snapshot": null,
            "suppressed_before": 0
        }))
        .unwrap()
    }

    fn png() -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        image::RgbImage::new(4, 4).write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    fn page() -> Source {
        Source::Page { client: Some("127.0.0.1:50000".into()) }
    }

    /// Alert ids `01KB...` numbered `i` (26 characters of Crockford base32).
    fn id(i: usize) -> String {
        const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
        let tail: String = (0..6).rev().map(|k| ALPHABET[(i >> (5 * k)) & 31] as char).collect();
        format!("01KB{}{tail}", "0".repeat(16))
    }

    /// The data-set files of a camera, by side, relative to its folder.
    fn files(dir: &Path) -> Vec<String> {
        let mut out = vec![];
        for sub in ["normal", "abnormal", "held-out/normal", "held-out/abnormal"] {
            if let Ok(entries) = std::fs::read_dir(dir.join(sub)) {
                out.extend(entries.map(|e| format!("{sub}/{}", e.unwrap().file_name().to_string_lossy())));
            }
        }
        out.sort();
        out
    }

    #[test]
    fn verdicts_copy_the_clean_frame_once_and_move_on_a_change_of_mind() {
        let dir = tempfile::tempdir().unwrap();
        let d = Dataset::new(dir.path(), DatasetConfig::default());
        d.keep_alert(&alert("cam1", ID), &png()).unwrap();
        assert_eq!(d.recent_alerts("cam1", 5)[0].id, ID);
        let a = d.verdict("cam1", ID, Verdict::FalseAlarm, &page()).unwrap();
        assert!(a.changed);
        let side = dir.path().join(if a.held_out { "dataset/cam1/held-out" } else { "dataset/cam1" });
        assert_eq!(a.file, side.join("normal").join(format!("{ID}.png")));
        assert_eq!(std::fs::read(&a.file).unwrap(), png());
        assert!(!d.verdict("cam1", ID, Verdict::FalseAlarm, &page()).unwrap().changed, "idempotent");
        assert_eq!(d.verdict_of("cam1", ID), Some(Verdict::FalseAlarm));
        let b = d.verdict("cam1", ID, Verdict::Confirmed, &page()).unwrap();
        assert!(b.changed && b.file.starts_with(side.join("abnormal")), "same side: {b:?}");
        assert!(!a.file.exists(), "moved, not copied twice");
        assert_eq!(d.verdict_of("cam1", ID), Some(Verdict::Confirmed));
        // Unknown ids, other cameras, malformed ids and paths write nothing.
        let other = "01KB0000000000000000000001";
        assert!(matches!(d.verdict("cam1", other, Verdict::Confirmed, &page()), Err(VerdictError::Unknown { .. })));
        assert!(matches!(d.verdict("cam2", ID, Verdict::Confirmed, &page()), Err(VerdictError::Unknown { .. })));
        assert!(matches!(
            d.verdict("cam1", "../../etc/passwd", Verdict::Confirmed, &page()),
            Err(VerdictError::BadId(_))
        ));
        assert!(matches!(d.verdict("..", ID, Verdict::Confirmed, &page()), Err(VerdictError::Unknown { .. })));
        assert!(!dir.path().join("dataset/cam2").exists());
    }

    #[test]
    fn kept_frames_and_samples_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let config = DatasetConfig { sample_normal: 2, sample_keep: 3, frames_keep: 2, ..Default::default() };
        let d = Dataset::new(dir.path(), config);
        for i in 0..4 {
            d.keep_alert(&alert("c", &format!("01KB000000000000000000000{i}")), &png()).unwrap();
        }
        let kept: Vec<String> = d.recent_alerts("c", 10).into_iter().map(|a| a.id).collect();
        assert_eq!(kept, ["01KB0000000000000000000003", "01KB0000000000000000000002"]);
        assert_eq!(std::fs::read_dir(dir.path().join("frames/c")).unwrap().count(), 4, "two frames, two JSONs");
        let mut written = 0;
        for i in 0..10 {
            if d.sample("c", || format!("01KB000000000000000000000{i}"), &png()).unwrap().is_some() {
                written += 1;
            }
        }
        assert_eq!(written, 5, "1 in 2");
        let samples = files(&dir.path().join("dataset/c"));
        assert_eq!(samples.len(), 3, "sample_keep, on both sides together: {samples:?}");
        // The newest three.
        let mut names: Vec<&str> = samples.iter().map(|f| f.rsplit('/').next().unwrap()).collect();
        names.sort();
        for (file, i) in names.iter().zip([5, 7, 9]) {
            assert!(file.starts_with(&format!("sample-01KB000000000000000000000{i}")), "{samples:?}");
        }
    }

    /// The side the retrain gate's by-name split gives a file (`vigil-train`'s `holdout_rank`
    /// below 0.2): a function of its name alone, which the frame's publisher can compute.
    fn public_rank_held_out(name: &str) -> bool {
        let mut h = Sha256::new();
        h.update(b"vigil-gate\0");
        h.update(name.as_bytes());
        let bytes: [u8; 8] = h.finalize()[..8].try_into().unwrap();
        ((u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64) < HOLDOUT_FRACTION
    }

    #[test]
    fn a_publisher_cannot_choose_the_side_of_the_hold_out_its_frames_land_on() {
        // The attack: a publisher varies its frames (and so their ids, which hash the content)
        // until each id's public rank says "held out", then has them marked. A public rank would
        // put every one of them on the side it chose; the box's key spreads them like any other.
        let chosen: Vec<String> =
            (0..).map(id).filter(|i| public_rank_held_out(&format!("{i}.png"))).take(100).collect();
        let (box1, box2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut sides = vec![];
        for state in [box1.path(), box2.path()] {
            let d = Dataset::new(state, DatasetConfig { frames_keep: 1000, ..DatasetConfig::default() });
            let mut held = vec![];
            for i in &chosen {
                d.keep_alert(&alert("cam1", i), &png()).unwrap();
                let a = d.verdict("cam1", i, Verdict::Confirmed, &page()).unwrap();
                assert_eq!(a.file.starts_with(state.join("dataset/cam1/held-out")), a.held_out);
                if a.held_out {
                    held.push(i.clone());
                }
            }
            assert!((5..=40).contains(&held.len()), "{} of 100 chosen ids held out", held.len());
            sides.push(held);
        }
        assert_ne!(sides[0], sides[1], "each box's own key decides");

        // The key: 64 hex digits, the daemon's alone, kept across restarts (same sides again).
        let key = box1.path().join(KEY_FILE);
        let text = std::fs::read_to_string(&key).unwrap();
        assert_eq!(text.trim().len(), 64);
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        let again = Dataset::new(box1.path(), DatasetConfig::default());
        for i in &chosen {
            let (_, held) = again.side("cam1", i).unwrap();
            assert_eq!(held, sides[0].contains(i), "{i}");
        }
        assert_eq!(std::fs::read_to_string(&key).unwrap(), text);

        // A key file cut short is replaced; the files already in stay where they are.
        std::fs::write(&key, "0123").unwrap();
        let fresh = Dataset::new(box1.path(), DatasetConfig::default());
        assert_eq!(fresh.verdict_of("cam1", &chosen[0]), Some(Verdict::Confirmed));
        let a = fresh.verdict("cam1", &chosen[0], Verdict::FalseAlarm, &page()).unwrap();
        assert_eq!(a.held_out, sides[0].contains(&chosen[0]), "a change of mind keeps the recorded side");
        fresh.side("cam1", "next").unwrap();
        let new_key = std::fs::read_to_string(&key).unwrap();
        assert!(new_key.trim().len() == 64 && new_key != text, "{new_key}");
    }

    #[test]
    fn a_data_set_from_before_the_hold_out_is_sorted_once_and_nothing_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("dataset/cam1");
        for (kind, n) in [("normal", 60), ("abnormal", 40)] {
            std::fs::create_dir_all(base.join(kind)).unwrap();
            for i in 0..n {
                std::fs::write(
                    base.join(kind).join(format!("{}.png", id(i + 1000 * (kind == "abnormal") as usize))),
                    png(),
                )
                .unwrap();
            }
        }
        let before = files(&base).len();
        let d = Dataset::new(dir.path(), DatasetConfig { sample_normal: 1, ..DatasetConfig::default() });
        d.sample("cam1", || id(5000), &png()).unwrap().unwrap();
        let after = files(&base);
        assert_eq!(after.len(), before + 1, "{after:?}");
        let held = after.iter().filter(|f| f.starts_with("held-out/")).count();
        assert!((5..=40).contains(&held), "{held} of 101 held out");
        assert!(!base.join("held-out.partial").exists());
        // Each file is where the key says, and sorting again moves nothing.
        for f in &after {
            let stem = Path::new(f).file_stem().unwrap().to_str().unwrap();
            assert_eq!(d.side("cam1", stem).unwrap().1, f.starts_with("held-out/"), "{f}");
        }
        d.sample("cam1", || id(5001), &png()).unwrap();
        assert_eq!(files(&base).len(), after.len() + 1);
    }

    #[test]
    fn each_verdict_is_recorded_with_where_it_came_from() {
        let dir = tempfile::tempdir().unwrap();
        let d = Dataset::new(dir.path(), DatasetConfig::default());
        d.keep_alert(&alert("cam1", ID), &png()).unwrap();
        let mqtt = Source::Mqtt { topic: "vigil/box1/cam1/feedback".into(), by: Some("qa-anna".into()) };
        let a = d.verdict("cam1", ID, Verdict::Confirmed, &mqtt).unwrap();
        d.verdict("cam1", ID, Verdict::Confirmed, &mqtt).unwrap();
        d.verdict("cam1", ID, Verdict::FalseAlarm, &page()).unwrap();
        let log = std::fs::read_to_string(dir.path().join("dataset/cam1").join(VERDICT_LOG)).unwrap();
        let lines: Vec<serde_json::Value> = log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2, "a repeat changes nothing and records nothing: {log}");
        let want = serde_json::json!({"via": "mqtt", "topic": "vigil/box1/cam1/feedback", "by": "qa-anna"});
        assert_eq!(
            (&lines[0]["id"], &lines[0]["verdict"], &lines[0]["source"]),
            (&ID.into(), &"confirmed".into(), &want)
        );
        assert_eq!((&lines[0]["previous"], &lines[0]["held_out"]), (&serde_json::Value::Null, &a.held_out.into()));
        let want = serde_json::json!({"via": "page", "client": "127.0.0.1:50000"});
        assert_eq!(
            (&lines[1]["verdict"], &lines[1]["previous"], &lines[1]["source"]),
            (&"false_alarm".into(), &"confirmed".into(), &want)
        );
        assert!(lines[1]["time"].as_str().unwrap().ends_with('Z'));

        // Bounded: past its size the log starts again, the older one kept beside it.
        let path = dir.path().join("dataset/cam1").join(VERDICT_LOG);
        std::fs::write(&path, vec![b'x'; VERDICT_LOG_MAX as usize + 1]).unwrap();
        d.verdict("cam1", ID, Verdict::Confirmed, &page()).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
        assert_eq!(std::fs::metadata(path.with_extension("jsonl.1")).unwrap().len(), VERDICT_LOG_MAX + 1);
    }
}
