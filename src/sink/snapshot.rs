//! Snapshots: the anomalous frame with its heatmap and region box, as JPEG, published
//! (retained) over MQTT and kept on disk, newest `keep` per camera.
//!
//! Rendering a snapshot (overlay, JPEG encoding) costs more than scoring the frame, so it
//! happens on a worker thread after the alert is on its way: the alert never waits for it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use image::DynamicImage;
use ndarray::{Array2, ArrayView2};

use crate::alert::Region;
use crate::frame::Area;
use crate::metrics::Metrics;
use vigil_model::overlay;

use super::publish::Publisher;

/// Longest side of a snapshot; larger frames are scaled down (a snapshot is for a person).
const MAX_SIDE: u32 = 1280;

/// The JPEG of `image` with `map` drawn over `area` and the region boxed.
pub fn render(image: &DynamicImage, area: Area, map: ArrayView2<'_, f32>, threshold: f32, region: &Region) -> Vec<u8> {
    let mut frame = image.to_rgb8();
    let (mh, mw) = map.dim();
    let values: Vec<f32> = map.iter().copied().collect();
    // The heat ramp starts at half the threshold and is red at twice it.
    let sub = image::imageops::crop_imm(&frame, area.x, area.y, area.w, area.h).to_image();
    let hot = overlay::overlay(&sub, &values, mh, mw, threshold * 0.5, threshold * 2.0);
    image::imageops::replace(&mut frame, &hot, area.x as i64, area.y as i64);
    let [x, y, w, h] = region.bbox;
    if w > 0 && h > 0 {
        let t = (frame.width().max(frame.height()) / 300).max(2);
        overlay::draw_box(&mut frame, x, y, x + w - 1, y + h - 1, [255, 0, 0], t);
    }
    let frame = if frame.width().max(frame.height()) > MAX_SIDE {
        DynamicImage::ImageRgb8(frame).resize(MAX_SIDE, MAX_SIDE, image::imageops::FilterType::Triangle).to_rgb8()
    } else {
        frame
    };
    let mut out = std::io::Cursor::new(Vec::new());
    let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85);
    frame.write_with_encoder(encoder).expect("JPEG encoding into memory does not fail");
    out.into_inner()
}

/// How many snapshots are kept on disk.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Per camera (`alerts.snapshot_keep`); 0 keeps none.
    pub keep: usize,
    /// Bytes per camera (`alerts.snapshot_max_mb`).
    pub max_bytes: u64,
    /// Bytes left free for the outbox (`alerts.disk_reserve_mb`): nothing is written below.
    pub reserve: u64,
}

/// Writes `jpeg` as `<dir>/<camera>/<id>.jpg` and removes the oldest beyond what `keep`
/// allows; refused when it would take the outbox's reserve.
pub fn save(dir: &Path, camera: &str, id: &str, jpeg: &[u8], keep: Retention) -> std::io::Result<PathBuf> {
    let folder = dir.join(camera);
    std::fs::create_dir_all(&folder)?;
    if !crate::space::may_write(&folder, jpeg.len() as u64, keep.reserve) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::StorageFull,
            "less than alerts.disk_reserve_mb free: kept for alerts, so snapshots are not saved until space is freed",
        ));
    }
    let path = path(dir, camera, id);
    vigil_model::fsio::write_atomic(&path, jpeg)?;
    // ULIDs sort by time, so the oldest are first by name.
    let mut names: Vec<(PathBuf, u64)> = std::fs::read_dir(&folder)?
        .filter_map(|e| e.ok().map(|e| (e.path(), e.metadata().map_or(0, |m| m.len()))))
        .filter(|(p, _)| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    names.sort();
    let sizes: Vec<u64> = names.iter().map(|(_, s)| *s).collect();
    let first_kept = crate::space::first_kept(&sizes, keep.keep, keep.max_bytes);
    for (old, _) in &names[..first_kept] {
        let _ = std::fs::remove_file(old);
    }
    Ok(path)
}

/// Where the snapshot of alert `id` is written.
pub fn path(dir: &Path, camera: &str, id: &str) -> PathBuf {
    dir.join(camera).join(format!("{id}.jpg"))
}

/// One snapshot to render, save and publish.
pub struct Job {
    /// The encoded frame (decoded again here: alerts are rare, decoded frames are large).
    pub frame: Vec<u8>,
    /// The scored part of the frame.
    pub area: Area,
    /// The anomaly map.
    pub map: Array2<f32>,
    /// The threshold in force.
    pub threshold: f32,
    /// The region the alert reports.
    pub region: Region,
    /// The camera.
    pub camera: String,
    /// The alert id (the file name).
    pub id: String,
}

/// The snapshot worker thread.
pub struct Worker {
    tx: Option<SyncSender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    metrics: Arc<Metrics>,
}

/// Snapshots waiting to be rendered; beyond this the newest are dropped (and counted): a
/// snapshot shows an anomaly, and the alert already went out.
const QUEUE: usize = 8;

impl Worker {
    /// Starts the thread: it keeps `keep` snapshots per camera under `dir` and publishes each,
    /// retained, on `<camera>/snapshot` when there is a broker.
    pub fn start(dir: PathBuf, keep: Retention, publisher: Publisher, metrics: Arc<Metrics>) -> Worker {
        let (tx, rx) = sync_channel(QUEUE);
        let m = metrics.clone();
        let vital = metrics.health.vital("snapshot worker");
        let thread = std::thread::Builder::new()
            .name("vigil-snapshots".into())
            .spawn(move || {
                let _vital = vital;
                work(rx, &dir, keep, &publisher, &m)
            })
            .expect("starting the snapshot thread");
        Worker { tx: Some(tx), thread: Some(thread), metrics }
    }

    /// Queues a snapshot; drops it (counted) when the worker is behind.
    pub fn submit(&self, job: Job) {
        if let Some(tx) = &self.tx
            && let Err(TrySendError::Full(job)) = tx.try_send(job)
        {
            tracing::debug!(camera = job.camera, "snapshot of alert {} dropped: the snapshot worker is behind", job.id);
            self.metrics.inc("vigil_snapshots_dropped_total", &[]);
        }
    }
}

impl Drop for Worker {
    /// Renders what is queued, then ends the thread.
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn work(rx: Receiver<Job>, dir: &Path, keep: Retention, publisher: &Publisher, metrics: &Metrics) {
    for job in rx {
        let (camera, id) = (job.camera.clone(), job.id.clone());
        if let Err(panic) = crate::guard::catch(|| snapshot(job, dir, keep, publisher, metrics)) {
            tracing::error!(
                camera,
                "snapshot of alert {id} not rendered: {}",
                crate::guard::reason("rendering", &panic)
            );
            metrics.inc("vigil_errors_total", &[("kind", "internal")]);
        }
    }
}

/// Renders, saves and publishes one snapshot.
fn snapshot(job: Job, dir: &Path, keep: Retention, publisher: &Publisher, metrics: &Metrics) {
    let image = match vigil_model::preprocess::decode(&job.frame) {
        Ok(i) => i,
        Err(e) => {
            // It decoded a moment ago, to be scored; only memory can make it fail now.
            tracing::warn!(camera = job.camera, "snapshot of alert {} not rendered: {e}", job.id);
            metrics.inc("vigil_errors_total", &[("kind", "snapshot")]);
            return;
        }
    };
    let jpeg = render(&image, job.area, job.map.view(), job.threshold, &job.region);
    if keep.keep > 0
        && let Err(e) = save(dir, &job.camera, &job.id, &jpeg, keep)
    {
        tracing::warn!(camera = job.camera, "snapshot not saved in {}: {e}", dir.display());
        metrics.inc("vigil_errors_total", &[("kind", "snapshot")]);
    }
    publisher.snapshot(&job.camera, jpeg);
}
