//! Backbone features of the training images, computed once per image through the same graph
//! the bundle will contain (on ONNX Runtime when its library loads, else tract), with a
//! progress bar.

use std::path::{Path, PathBuf};

use ndarray::Array4;
use vigil_model::bundle::manifest::{ColorMode, InputSpec};
use vigil_model::engine::EngineConfig;
use vigil_model::engine::graph::GraphRunner;
use vigil_model::onnx::backbone::{EfficientNetLite, IMAGENET_MEAN, IMAGENET_STD};
use vigil_model::onnx::features::{FeatureShape, extractor_model};
use vigil_model::onnx::graph::encode;
use vigil_model::preprocess::Preprocessor;

use vigil_model::rng::{Rng, mix};

use crate::data::corrupt::corrupt_batch;
use crate::data::sets::{Skipped, load_image};

/// The model input of a feature family: RGB at `[height, width]`, ImageNet-normalised.
pub fn input_spec(height: usize, width: usize) -> InputSpec {
    InputSpec {
        mean: IMAGENET_MEAN.to_vec(),
        std: IMAGENET_STD.to_vec(),
        ..InputSpec::unit_range("image", ColorMode::Rgb, height, width)
    }
}

/// Features of a set of images: `[images, C, gh, gw]`, row-major, one block per image.
#[derive(Debug, Clone)]
pub struct Features {
    /// Their shape per image.
    pub shape: FeatureShape,
    /// Values.
    pub data: Vec<f32>,
    /// The images they came from (readable ones, in order).
    pub paths: Vec<PathBuf>,
}

impl Features {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// Values of one image, `[C, gh, gw]`.
    pub fn image(&self, i: usize) -> &[f32] {
        let per = self.shape.channels * self.shape.cells();
        &self.data[i * per..(i + 1) * per]
    }
}

/// Runs the backbone over images.
pub struct Extractor {
    runner: GraphRunner,
    pre: Preprocessor,
    shape: FeatureShape,
    input: [usize; 2],
}

impl Extractor {
    /// The extractor of `net` for `[height, width]` inputs.
    pub fn new(net: &EfficientNetLite, input: [usize; 2], engine: &EngineConfig) -> anyhow::Result<Extractor> {
        let (model, shape) = extractor_model(net, input);
        let runner = GraphRunner::load(&encode(&model), [1, 3, input[0], input[1]], engine)?;
        Ok(Extractor { runner, pre: Preprocessor::new(&input_spec(input[0], input[1])), shape, input })
    }

    /// The engine it runs on.
    pub fn engine(&self) -> &'static str {
        self.runner.name()
    }

    /// The features' shape.
    pub fn shape(&self) -> FeatureShape {
        self.shape
    }

    /// Features of one preprocessed image tensor `[3, h, w]`.
    pub fn features_of(&self, tensor: Vec<f32>) -> anyhow::Result<Vec<f32>> {
        let [h, w] = self.input;
        let x = Array4::from_shape_vec((1, 3, h, w), tensor)?;
        let out = self.runner.run(x.view())?;
        Ok(out.into_iter().next().expect("one output").into_raw_vec_and_offset().0)
    }

    /// Features of image files; unreadable ones are skipped and listed. `what` names the set
    /// on the progress bar.
    pub fn extract(&self, paths: &[PathBuf], what: &str) -> anyhow::Result<(Features, Vec<Skipped>)> {
        self.extract_keeping(paths, what, None)
    }

    /// As [`Extractor::extract`], also returning the preprocessed input tensors (`[3, h, w]`,
    /// one block per kept image, in the features' order): what the student family learns
    /// from, decoded once with its features.
    pub fn extract_with_inputs(
        &self,
        paths: &[PathBuf],
        what: &str,
    ) -> anyhow::Result<(Features, Vec<f32>, Vec<Skipped>)> {
        let mut inputs = Vec::with_capacity(paths.len() * 3 * self.input[0] * self.input[1]);
        let (features, skipped) = self.extract_keeping(paths, what, Some(&mut inputs))?;
        Ok((features, inputs, skipped))
    }

    fn extract_keeping(
        &self,
        paths: &[PathBuf],
        what: &str,
        mut inputs: Option<&mut Vec<f32>>,
    ) -> anyhow::Result<(Features, Vec<Skipped>)> {
        let bar = progress(paths.len(), what);
        let per = self.shape.channels * self.shape.cells();
        let mut data = Vec::with_capacity(paths.len() * per);
        let (mut kept, mut skipped) = (vec![], vec![]);
        for p in paths {
            match self.load(p) {
                Ok(t) => {
                    if let Some(inputs) = inputs.as_deref_mut() {
                        inputs.extend_from_slice(&t);
                    }
                    data.extend(self.features_of(t)?);
                    kept.push(p.clone());
                }
                Err(reason) => {
                    tracing::warn!("skipping {}: {reason}", p.display());
                    skipped.push(Skipped { path: p.clone(), reason });
                }
            }
            bar.inc(1);
        }
        bar.finish_and_clear();
        Ok((Features { shape: self.shape, data, paths: kept }, skipped))
    }

    /// Features of the same images with synthetic defects pasted on (`corrupt.rs`, on images
    /// in [0, 1], in groups of 8 so that a defect can borrow another image's texture), one
    /// block per image in the order of `paths`: the fixed pool of corrupted inputs the feature
    /// autoencoder learns to restore.
    pub fn extract_corrupted(&self, paths: &[PathBuf], seed: u64) -> anyhow::Result<Vec<f32>> {
        let [h, w] = self.input;
        let plane = h * w;
        let bar = progress(paths.len(), "defect features");
        let mut rng = Rng::new(mix(seed ^ 0xde7ec7));
        let mut out = Vec::with_capacity(paths.len() * self.shape.channels * self.shape.cells());
        for group in paths.chunks(8) {
            let mut images = Vec::with_capacity(group.len() * 3 * plane);
            for p in group {
                let t = self.load(p).map_err(|reason| anyhow::anyhow!("{}: {reason}", p.display()))?;
                images
                    .extend(t.iter().enumerate().map(|(i, v)| v * IMAGENET_STD[i / plane] + IMAGENET_MEAN[i / plane]));
            }
            let corrupted = corrupt_batch(&images, [group.len(), 3, h, w], &mut rng);
            for image in corrupted.chunks(3 * plane) {
                let t = image.iter().enumerate().map(|(i, v)| (v - IMAGENET_MEAN[i / plane]) / IMAGENET_STD[i / plane]);
                out.extend(self.features_of(t.collect())?);
                bar.inc(1);
            }
        }
        bar.finish_and_clear();
        Ok(out)
    }

    /// The input `[height, width]`.
    pub fn input(&self) -> [usize; 2] {
        self.input
    }

    fn load(&self, path: &Path) -> Result<Vec<f32>, String> {
        let mut tensors = load_image(&self.pre, path)?;
        tensors.pop().ok_or_else(|| "no input".to_owned())
    }
}

/// A progress bar in vigil-train's style.
pub fn progress(len: usize, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(what.to_owned());
    bar
}
