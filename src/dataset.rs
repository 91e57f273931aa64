//! The camera's growing data set: each alert's clean frame kept beside it (with the alert's
//! JSON, newest `frames_keep` per camera), an operator's verdict copying that frame into
//! `<state_dir>/dataset/<camera>/{normal,abnormal}/`, and a sample of frames scored normal.
//! `vigil-train retrain --dataset` reads that folder.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::alert::Alert;
use crate::problem::{Problems, valid_id};
use vigil_model::fsio::write_atomic;

/// `[dataset]`: what the daemon keeps for retraining.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DatasetConfig {
    /// Copy 1 in N frames scored normal into `<state_dir>/dataset/<camera>/normal/` (as
    /// `sample-<id>.<ext>`); 0: none. Frames marked as false alarms go there always.
    pub sample_normal: u32,
    /// Sampled normal frames kept per camera (the oldest removed first); frames an operator
    /// gave a verdict on are never removed.
    pub sample_keep: usize,
    /// Alerts' clean frames kept per camera in `<state_dir>/frames/<camera>/` (the oldest
    /// removed first): a verdict can be given on these.
    pub frames_keep: usize,
    /// Megabytes of alert frames kept per camera at most (the oldest removed first), whatever
    /// `frames_keep` allows.
    pub frames_max_mb: u64,
    /// Megabytes of sampled normal frames kept per camera at most (the oldest removed first).
    pub sample_max_mb: u64,
}

impl Default for DatasetConfig {
    fn default() -> Self {
        DatasetConfig { sample_normal: 0, sample_keep: 2000, frames_keep: 200, frames_max_mb: 200, sample_max_mb: 500 }
    }
}

impl DatasetConfig {
    /// Checks the values.
    pub fn validate(&self, p: &mut Problems) {
        if self.sample_normal > 0 && self.sample_keep == 0 {
            p.add(
                "dataset.sample_keep",
                "0 with dataset.sample_normal on would keep nothing: raise it, or set sample_normal = 0",
            );
        }
    }
}

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

/// Removes the oldest files of `folder` whose names start with `prefix` (and end with one of
/// the image extensions), keeping the newest `keep` that fit in `max_bytes`; ids sort by time,
/// so the oldest are first by name.
fn prune(folder: &Path, prefix: &str, keep: usize, max_bytes: u64) {
    let Ok(entries) = std::fs::read_dir(folder) else { return };
    let mut ids: Vec<(String, u64)> = entries
        .filter_map(|e| {
            let e = e.ok()?;
            Some((e.file_name().into_string().ok()?, e.metadata().map_or(0, |m| m.len())))
        })
        .filter(|(n, _)| n.starts_with(prefix) && !n.ends_with(".json") && !n.ends_with(".tmp"))
        .collect();
    ids.sort();
    let sizes: Vec<u64> = ids.iter().map(|(_, s)| *s).collect();
    let first_kept = crate::space::first_kept(&sizes, keep, max_bytes);
    for (name, _) in &ids[..first_kept] {
        let _ = std::fs::remove_file(folder.join(name));
        if let Some(stem) = Path::new(name).file_stem() {
            let _ = std::fs::remove_file(folder.join(stem).with_extension("json"));
        }
    }
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
        prune(&folder, "", self.config.frames_keep, self.config.frames_max_mb.saturating_mul(1 << 20));
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
            .find(|v| find(&self.camera_dir(camera).join(v.folder()), id).is_some())
    }

    /// Applies a verdict: the alert's clean frame is copied into the data set's folder of the
    /// verdict (and out of the other one, when the operator changed their mind). The same
    /// verdict again changes nothing.
    pub fn verdict(&self, camera: &str, id: &str, verdict: Verdict) -> Result<Applied, VerdictError> {
        let _one_at_a_time = self.verdicts.lock().expect("verdict lock");
        if !valid_alert_id(id) {
            return Err(VerdictError::BadId(id.escape_default().to_string()));
        }
        let unknown = || VerdictError::Unknown { camera: camera.escape_default().to_string(), id: id.to_owned() };
        if !valid_id(camera) {
            return Err(unknown());
        }
        let base = self.camera_dir(camera);
        let other = match verdict {
            Verdict::FalseAlarm => Verdict::Confirmed,
            Verdict::Confirmed => Verdict::FalseAlarm,
        };
        if let Some(file) = find(&base.join(verdict.folder()), id) {
            return Ok(Applied { file, changed: false });
        }
        let source = find(&self.frames.join(camera), id);
        let moved_from = find(&base.join(other.folder()), id);
        let from = source.clone().or(moved_from.clone()).ok_or_else(unknown)?;
        let io = |e: std::io::Error, what: &Path| VerdictError::Io(format!("{}: {e}", what.display()));
        let folder = base.join(verdict.folder());
        std::fs::create_dir_all(&folder).map_err(|e| io(e, &folder))?;
        let name = from.file_name().expect("a file name").to_owned();
        let file = folder.join(name);
        let bytes = std::fs::read(&from).map_err(|e| io(e, &from))?;
        self.room_for(bytes.len()).map_err(|e| io(e, &file))?;
        write_atomic(&file, &bytes).map_err(|e| io(e, &file))?;
        if let Some(old) = moved_from {
            std::fs::remove_file(&old).map_err(|e| io(e, &old))?;
        }
        Ok(Applied { file, changed: true })
    }

    /// Counts a frame scored normal and, every `sample_normal`-th, copies it into the data
    /// set's `normal/` folder under the id `id` makes (asked only when a sample is due);
    /// returns the file written.
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
        let folder = self.camera_dir(camera).join("normal");
        std::fs::create_dir_all(&folder)?;
        let file = folder.join(format!("sample-{}.{}", id(), extension(frame)));
        write_atomic(&file, frame)?;
        prune(&folder, "sample-", self.config.sample_keep, self.config.sample_max_mb.saturating_mul(1 << 20));
        Ok(Some(file))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn verdicts_copy_the_clean_frame_once_and_move_on_a_change_of_mind() {
        let dir = tempfile::tempdir().unwrap();
        let d = Dataset::new(dir.path(), DatasetConfig::default());
        d.keep_alert(&alert("cam1", ID), &png()).unwrap();
        assert_eq!(d.recent_alerts("cam1", 5)[0].id, ID);
        let a = d.verdict("cam1", ID, Verdict::FalseAlarm).unwrap();
        assert!(a.changed);
        assert_eq!(a.file, dir.path().join("dataset/cam1/normal").join(format!("{ID}.png")));
        assert_eq!(std::fs::read(&a.file).unwrap(), png());
        assert!(!d.verdict("cam1", ID, Verdict::FalseAlarm).unwrap().changed, "idempotent");
        assert_eq!(d.verdict_of("cam1", ID), Some(Verdict::FalseAlarm));
        let b = d.verdict("cam1", ID, Verdict::Confirmed).unwrap();
        assert!(b.changed && b.file.starts_with(dir.path().join("dataset/cam1/abnormal")));
        assert!(!a.file.exists(), "moved, not copied twice");
        assert_eq!(d.verdict_of("cam1", ID), Some(Verdict::Confirmed));
        // Unknown ids, other cameras, malformed ids and paths write nothing.
        let other = "01KB0000000000000000000001";
        assert!(matches!(d.verdict("cam1", other, Verdict::Confirmed), Err(VerdictError::Unknown { .. })));
        assert!(matches!(d.verdict("cam2", ID, Verdict::Confirmed), Err(VerdictError::Unknown { .. })));
        assert!(matches!(d.verdict("cam1", "../../etc/passwd", Verdict::Confirmed), Err(VerdictError::BadId(_))));
        assert!(matches!(d.verdict("..", ID, Verdict::Confirmed), Err(VerdictError::Unknown { .. })));
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
        assert_eq!(std::fs::read_dir(dir.path().join("dataset/c/normal")).unwrap().count(), 3, "sample_keep");
    }
}
