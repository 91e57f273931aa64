//! The scoring stages between the sources and the decision: decode workers turn frames into
//! tensors (overlapping the engine), and one inference thread batches what has queued up
//! (up to `max_batch`, waiting at most `max_wait`) and runs the engine.
//!
//! All queues are bounded: a full queue makes the stage before it wait, up to the sources,
//! which hand their frames to the first one through [`Queue`].

pub mod queue;

pub use queue::{Closed, Queue};

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use ndarray::Array2;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::frame::Area;
use crate::frame::Frame;
use crate::problem::Problems;
use vigil_model::bundle::Bundle;
use vigil_model::engine::{self, EngineConfig, LoadedEngine};
use vigil_model::preprocess::{PreprocessError, Preprocessor, decode};
use vigil_model::tiling::{Inputs, score_frames};

/// `[scoring]`: queues, batching and workers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ScoringConfig {
    /// Frames waiting to be decoded; a full queue slows the sources down (backpressure).
    /// Each waiting frame holds its encoded bytes (150 KB for a 640x480 JPEG): 16 keep the
    /// decoder and the engine busy (64 scored no faster here) at a quarter of the memory.
    pub queue: usize,
    /// Most frames scored in one engine call when frames queue up. ONNX Runtime's memory grows
    /// with the batch: 4 keeps most of batching's speed at a bounded peak (docs/performance.md).
    pub max_batch: usize,
    /// How long the engine waits for a batch to fill once a frame is ready (`0ms`: never).
    #[serde(with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_wait: Duration,
    /// Threads that decode and preprocess frames (overlapping the engine).
    pub decode_workers: usize,
}

impl Default for ScoringConfig {
    fn default() -> Self {
        ScoringConfig { queue: 16, max_batch: 4, max_wait: Duration::from_millis(2), decode_workers: 1 }
    }
}

impl ScoringConfig {
    /// Checks the values.
    pub fn validate(&self, p: &mut Problems) {
        if self.queue == 0 {
            p.add("scoring.queue", "must be at least 1");
        }
        if self.max_batch == 0 || self.max_batch > vigil_model::engine::io::MAX_BATCH {
            p.add("scoring.max_batch", format!("must be 1 to {}", vigil_model::engine::io::MAX_BATCH));
        }
        if self.decode_workers == 0 || self.decode_workers > 64 {
            p.add("scoring.decode_workers", "must be 1 to 64");
        }
    }
}

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
    /// The frame's class index in a conditional model.
    pub class: Option<usize>,
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

/// Decodes a frame, crops its region of interest and builds the model input. A panic on the
/// way (a decoder's bug) refuses the frame, as `internal`, instead of ending the caller.
pub fn prepare(frame: Frame, model: Arc<Model>, roi: Option<[u32; 4]>) -> Result<Prepared, Refused> {
    match crate::guard::catch(|| inputs_of(&frame, &model, roi)) {
        Ok(Ok(FrameInput { inputs, area, sha256, class })) => {
            Ok(Prepared { frame, model, inputs, class, area, sha256 })
        }
        Ok(Err((kind, reason))) => Err(Box::new((frame, kind, reason))),
        Err(panic) => Err(Box::new((frame, "internal", crate::guard::reason("decoding", &panic)))),
    }
}

/// What [`inputs_of`] makes of a frame.
struct FrameInput {
    inputs: Inputs,
    /// The part of the frame the inputs cover.
    area: Area,
    sha256: [u8; 32],
    /// The class index, for a conditional model.
    class: Option<usize>,
}

/// The model input of `frame`, or the kind of problem and the reason.
fn inputs_of(frame: &Frame, model: &Model, roi: Option<[u32; 4]>) -> Result<FrameInput, (&'static str, String)> {
    let manifest = &model.bundle.manifest;
    let class = manifest.resolve_class(frame.class.as_deref()).map_err(|e| ("unknown_class", e))?;
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
            return Err((kind, e.to_string()));
        }
    };
    let (iw, ih) = (image.width(), image.height());
    let (rx, ry, rw, rh) = match roi {
        Some([x, y, w, h]) => {
            if x.saturating_add(w) > iw || y.saturating_add(h) > ih {
                let reason =
                    format!("the camera's roi [{x}, {y}, {w}, {h}] does not fit this {iw}x{ih} frame; fix cameras.roi");
                return Err(("roi", reason));
            }
            (x, y, w, h)
        }
        None => (0, 0, iw, ih),
    };
    let cropped = if (rw, rh) == (iw, ih) { image } else { image.crop_imm(rx, ry, rw, rh) };
    let inputs = model.pre.inputs(&cropped);
    let (cx, cy, cw, ch) = inputs.area;
    Ok(FrameInput { inputs, area: Area { x: rx + cx, y: ry + cy, w: cw, h: ch }, sha256, class })
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
    health: &Arc<crate::health::Health>,
) -> Stages {
    let (frames_tx, frames_rx) = mpsc::channel::<Frame>(config.queue);
    let frames_rx = Arc::new(Mutex::new(frames_rx));
    let (prep_tx, prep_rx) = std::sync::mpsc::sync_channel::<Prepared>(config.max_batch * 2);
    let rois = Arc::new(rois);
    let mut threads = vec![];
    for i in 0..config.decode_workers {
        let (rx, tx, out, models, rois) =
            (frames_rx.clone(), prep_tx.clone(), out.clone(), models.clone(), rois.clone());
        let vital = health.vital(format!("decode worker {i}"));
        let t = std::thread::Builder::new()
            .name(format!("vigil-decode-{i}"))
            .spawn(move || {
                let _vital = vital;
                decode_worker(rx, tx, out, models, rois)
            })
            .expect("spawning a decode thread");
        threads.push(t);
    }
    drop(prep_tx);
    let (max_batch, max_wait) = (config.max_batch, config.max_wait);
    let vital = health.vital("inference thread");
    let t = std::thread::Builder::new()
        .name("vigil-infer".into())
        .spawn(move || {
            let _vital = vital;
            infer(prep_rx, out, max_batch, max_wait)
        })
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
    // Every frame of a conditional model has its class (checked when it was prepared).
    let classes: Option<Vec<i64>> = batch.iter().map(|p| p.class.map(|k| k as i64)).collect();
    let classes = classes.filter(|_| model.engine.classes().is_some());
    let scored =
        crate::guard::catch(|| score_frames(&model.engine, &model.bundle.manifest.score, &inputs, classes.as_deref()))
            .map_err(|panic| ("internal", crate::guard::reason("the engine", &panic)))
            .and_then(|r| r.map_err(|e| ("engine", e.to_string())));
    match scored {
        Ok(scored) => batch
            .into_iter()
            .zip(scored)
            .map(|(mut prepared, (score, map))| {
                // The input tensors are spent; the frame may wait a while for its decision.
                prepared.inputs.tensors = Vec::new();
                Finished::Scored { score, map, prepared: Box::new(prepared) }
            })
            .collect(),
        Err((kind, reason)) => {
            batch.into_iter().map(|p| Finished::Rejected { frame: p.frame, kind, reason: reason.clone() }).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use ndarray::ArrayView4;

    use super::*;
    use crate::frame::Origin;
    use vigil_model::engine::{Engine, EngineChoice, EngineError, Scored};

    /// The real engine, except that its first call panics, as a bug reached by one frame would.
    struct PanicsOnce {
        inner: Box<dyn Engine>,
        panicked: AtomicBool,
    }

    impl Engine for PanicsOnce {
        fn name(&self) -> &'static str {
            self.inner.name()
        }

        fn run(&self, batch: ArrayView4<'_, f32>, classes: Option<&[i64]>) -> Result<Scored, EngineError> {
            if !self.panicked.swap(true, Ordering::SeqCst) {
                panic!("index out of bounds: the len is 3 but the index is 7");
            }
            self.inner.run(batch, classes)
        }
    }

    fn frame(name: &str, bytes: Vec<u8>) -> Frame {
        Frame {
            slot: 0,
            camera: "cam".into(),
            class: None,
            origin: Origin::File(name.into()),
            bytes,
            time: std::time::SystemTime::now(),
            received: Instant::now(),
            trigger: None,
            done: None,
        }
    }

    /// The next result, or a failure when none comes: a stage that died sends nothing more.
    fn next(out: &mut mpsc::Receiver<Finished>) -> Finished {
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        loop {
            match out.try_recv() {
                Ok(f) => return f,
                Err(mpsc::error::TryRecvError::Empty) if Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(5))
                }
                Err(e) => panic!("no result from the scoring stages within 30 s ({e}): a stage stopped"),
            }
        }
    }

    #[test]
    fn a_panic_in_the_engine_refuses_its_frame_and_the_next_frame_is_scored() {
        let bundle = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/surface-dae");
        let config = EngineConfig { kind: EngineChoice::Tract, threads: Some(1), ..Default::default() };
        let model = Model::load(&bundle, &config).unwrap();
        let engine = model.engine.wrap(|inner| Box::new(PanicsOnce { inner, panicked: AtomicBool::new(false) }));
        let model = Arc::new(Model { engine, ..model });
        let models = Arc::new(Models::new(vec![model], vec![bundle]));
        let (out_tx, mut out_rx) = mpsc::channel(8);
        let scoring = ScoringConfig { max_batch: 1, ..ScoringConfig::default() };
        let stages = start(&scoring, models, vec![None], out_tx, &Default::default());
        let mut png = std::io::Cursor::new(vec![]);
        image::GrayImage::from_fn(64, 48, |x, y| image::Luma([(x * 3 + y) as u8]))
            .write_to(&mut png, image::ImageFormat::Png)
            .unwrap();
        for name in ["first.png", "second.png"] {
            stages.frames.blocking_send(frame(name, png.get_ref().clone())).unwrap();
        }
        match next(&mut out_rx) {
            Finished::Rejected { frame, kind, reason } => {
                assert_eq!((frame.origin.describe().as_str(), kind), ("first.png", "internal"));
                assert!(reason.contains("the engine crashed on this frame (index out of bounds"), "{reason}");
                assert!(reason.contains("please report it"), "{reason}");
            }
            Finished::Scored { .. } => panic!("the frame whose engine call panicked was scored"),
        }
        match next(&mut out_rx) {
            Finished::Scored { prepared, score, map } => {
                assert_eq!(prepared.frame.origin.describe(), "second.png");
                assert!(score.is_finite() && map.is_some());
            }
            Finished::Rejected { reason, .. } => panic!("the inference thread did not go on: {reason}"),
        }
        stages.join();
    }
}
