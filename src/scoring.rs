//! The scoring stages between the sources and the decision: decode workers turn frames into
//! tensors (overlapping the engine), and one inference thread batches what has queued up
//! (up to `max_batch`, waiting at most `max_wait`) and runs the engine.
//!
//! All queues are bounded: a full queue makes the stage before it wait, up to the sources.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use anyhow::Context;
use ndarray::Array2;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::bundle::Bundle;
use crate::config::ScoringConfig;
use crate::decide::Area;
use crate::engine::{self, EngineConfig, LoadedEngine};
use crate::frame::Frame;
use crate::preprocess::{PreprocessError, Preprocessor, decode};
use crate::tiling::{Inputs, score_frames};

/// A bundle loaded on an engine, ready to serve.
#[derive(Debug)]
pub struct Model {
    /// The bundle.
    pub bundle: Bundle,
    /// Its engine.
    pub engine: LoadedEngine,
    /// Its preprocessing.
    pub pre: Preprocessor,
}

impl Model {
    /// Loads, checks and test-runs a bundle (blocking).
    pub fn load(path: &Path, config: &EngineConfig) -> anyhow::Result<Model> {
        let mut bundle = Bundle::load(path)?;
        // The engines keep their own copy of the graph: the file's bytes (5.6 MB for the
        // default bundle) are released, not kept for the daemon's life.
        let engine =
            engine::load_releasing(&mut bundle, config).with_context(|| format!("bundle {}", path.display()))?;
        let pre = Preprocessor::new(&bundle.manifest.input);
        Ok(Model { bundle, engine, pre })
    }
}

/// The model each camera slot serves; swapped whole on reload.
#[derive(Debug)]
pub struct Models {
    slots: RwLock<Vec<Arc<Model>>>,
    /// The bundle path of each slot.
    pub paths: Vec<PathBuf>,
}

impl Models {
    /// Slots in `[[cameras]]` order.
    pub fn new(models: Vec<Arc<Model>>, paths: Vec<PathBuf>) -> Models {
        Models { slots: RwLock::new(models), paths }
    }

    /// The model of a slot.
    pub fn get(&self, slot: usize) -> Arc<Model> {
        self.slots.read().expect("models lock")[slot].clone()
    }

    /// Replaces the model of every slot that serves `path`.
    pub fn swap(&self, path: &Path, model: Arc<Model>) {
        let mut slots = self.slots.write().expect("models lock");
        for (slot, p) in self.paths.iter().enumerate() {
            if p == path {
                slots[slot] = model.clone();
            }
        }
    }
}

/// A decoded frame with its input tensor.
#[derive(Debug)]
pub struct Prepared {
    /// The frame, its encoded bytes kept for a snapshot: an alert's frame is decoded again
    /// by the snapshot worker, so the queues hold encoded frames (tens of kilobytes) rather
    /// than decoded ones (about a megabyte each at 640x480).
    pub frame: Frame,
    /// The model it is scored with (fixed at decode time, so a reload never mixes models).
    pub model: Arc<Model>,
    /// The model inputs (one tensor, or one per tile).
    pub inputs: Inputs,
    /// The part of the frame the input was cut from.
    pub area: Area,
    /// SHA-256 of the encoded frame, for the alert id.
    pub sha256: [u8; 32],
}

/// What leaves the scoring stages.
#[derive(Debug)]
pub enum Finished {
    /// Scored.
    Scored {
        /// The frame and its tensor.
        prepared: Box<Prepared>,
        /// The raw score.
        score: f32,
        /// The `[H, W]` anomaly map, when the model has one.
        map: Option<Array2<f32>>,
    },
    /// Refused.
    Rejected {
        /// The frame.
        frame: Frame,
        /// The kind of problem, a metric label (`corrupt`, `format`, `too_large`, ...).
        kind: &'static str,
        /// What was wrong and what to do.
        reason: String,
    },
}

/// A frame refused while preparing it: the frame, the kind of problem, the reason.
pub type Refused = Box<(Frame, &'static str, String)>;

/// Decodes a frame, crops its region of interest and builds the model input.
pub fn prepare(frame: Frame, model: Arc<Model>, roi: Option<[u32; 4]>) -> Result<Prepared, Refused> {
    let sha256: [u8; 32] = Sha256::digest(&frame.bytes).into();
    let image = match decode(&frame.bytes) {
        Ok(i) => i,
        Err(e) => {
            let kind = match e {
                PreprocessError::Empty => "empty",
                PreprocessError::Format(_) => "format",
                PreprocessError::Corrupt(_) => "corrupt",
                PreprocessError::TooLarge(_) => "too_large",
            };
            return Err(Box::new((frame, kind, e.to_string())));
        }
    };
    let (iw, ih) = (image.width(), image.height());
    let (rx, ry, rw, rh) = match roi {
        Some([x, y, w, h]) => {
            if x.saturating_add(w) > iw || y.saturating_add(h) > ih {
                let reason =
                    format!("the camera's roi [{x}, {y}, {w}, {h}] does not fit this {iw}x{ih} frame; fix cameras.roi");
                return Err(Box::new((frame, "roi", reason)));
            }
            (x, y, w, h)
        }
        None => (0, 0, iw, ih),
    };
    let cropped = if (rw, rh) == (iw, ih) { image } else { image.crop_imm(rx, ry, rw, rh) };
    let inputs = model.pre.inputs(&cropped);
    let (cx, cy, cw, ch) = inputs.area;
    Ok(Prepared { frame, model, inputs, area: Area { x: rx + cx, y: ry + cy, w: cw, h: ch }, sha256 })
}

/// How many scored frames may wait for their decision: each holds its encoded bytes (for a
/// snapshot) and its anomaly map, and two batches' worth keep the engine busy while alerts
/// are stored.
pub fn results_capacity(config: &ScoringConfig) -> usize {
    config.max_batch.max(1) * 2
}

/// The running scoring stages.
pub struct Stages {
    /// Where sources put frames.
    pub frames: mpsc::Sender<Frame>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Stages {
    /// Waits for the stages to drain (after every frame sender is dropped).
    pub fn join(self) {
        drop(self.frames);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Starts the decode workers and the inference thread; results go to `out`.
pub fn start(
    config: &ScoringConfig,
    models: Arc<Models>,
    rois: Vec<Option<[u32; 4]>>,
    out: mpsc::Sender<Finished>,
) -> Stages {
    let (frames_tx, frames_rx) = mpsc::channel::<Frame>(config.queue);
    let frames_rx = Arc::new(Mutex::new(frames_rx));
    let (prep_tx, prep_rx) = std::sync::mpsc::sync_channel::<Prepared>(config.max_batch * 2);
    let rois = Arc::new(rois);
    let mut threads = vec![];
    for i in 0..config.decode_workers {
        let (rx, tx, out, models, rois) =
            (frames_rx.clone(), prep_tx.clone(), out.clone(), models.clone(), rois.clone());
        let t = std::thread::Builder::new()
            .name(format!("vigil-decode-{i}"))
            .spawn(move || decode_worker(rx, tx, out, models, rois))
            .expect("spawning a decode thread");
        threads.push(t);
    }
    drop(prep_tx);
    let (max_batch, max_wait) = (config.max_batch, config.max_wait);
    let t = std::thread::Builder::new()
        .name("vigil-infer".into())
        .spawn(move || infer(prep_rx, out, max_batch, max_wait))
        .expect("spawning the inference thread");
    threads.push(t);
    Stages { frames: frames_tx, threads }
}

fn decode_worker(
    rx: Arc<Mutex<mpsc::Receiver<Frame>>>,
    tx: SyncSender<Prepared>,
    out: mpsc::Sender<Finished>,
    models: Arc<Models>,
    rois: Arc<Vec<Option<[u32; 4]>>>,
) {
    loop {
        let frame = { rx.lock().expect("frame queue lock").blocking_recv() };
        let Some(frame) = frame else { return };
        let model = models.get(frame.slot);
        let roi = rois[frame.slot];
        match prepare(frame, model, roi) {
            Ok(p) => {
                if tx.send(p).is_err() {
                    return;
                }
            }
            Err(refused) => {
                let (frame, kind, reason) = *refused;
                if out.blocking_send(Finished::Rejected { frame, kind, reason }).is_err() {
                    return;
                }
            }
        }
    }
}

fn infer(rx: Receiver<Prepared>, out: mpsc::Sender<Finished>, max_batch: usize, max_wait: std::time::Duration) {
    let mut carry: Option<Prepared> = None;
    loop {
        let first = match carry.take() {
            Some(p) => p,
            None => match rx.recv() {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let limit = max_batch.min(first.model.engine.max_batch()).max(1);
        let deadline = Instant::now() + max_wait;
        let mut batch = vec![first];
        while batch.len() < limit {
            let next = match rx.try_recv() {
                Ok(p) => p,
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(p) => p,
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                },
            };
            if Arc::ptr_eq(&next.model, &batch[0].model) {
                batch.push(next);
            } else {
                carry = Some(next);
                break;
            }
        }
        for f in run_batch(batch) {
            if out.blocking_send(f).is_err() {
                return;
            }
        }
    }
}

fn run_batch(batch: Vec<Prepared>) -> Vec<Finished> {
    let model = batch[0].model.clone();
    let inputs: Vec<&Inputs> = batch.iter().map(|p| &p.inputs).collect();
    match score_frames(&model.engine, &model.bundle.manifest.score, &inputs) {
        Ok(scored) => batch
            .into_iter()
            .zip(scored)
            .map(|(mut prepared, (score, map))| {
                // The input tensors are spent; the frame may wait a while for its decision.
                prepared.inputs.tensors = Vec::new();
                Finished::Scored { score, map, prepared: Box::new(prepared) }
            })
            .collect(),
        Err(e) => batch
            .into_iter()
            .map(|p| Finished::Rejected { frame: p.frame, kind: "engine", reason: e.to_string() })
            .collect(),
    }
}
