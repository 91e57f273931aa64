//! The student–teacher family (`student`), in the manner of STFPM and EfficientAD with the
//! frozen backbone as the teacher: a small convolutional student, trained with burn from
//! scratch, learns to predict the teacher's features (standardised per channel) of the
//! training images from the image itself. Where a part looks as the training parts did, the
//! student has learnt the teacher's answer; where it does not, the two disagree, and a cell
//! scores by their squared difference averaged over channels.

use std::sync::atomic::{AtomicBool, Ordering};

use burn::module::Module;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor, TensorData};
use vigil_model::onnx::net::{Layer, Sequential};
use vigil_model::rng::{Rng, mix};

use super::extract::{Features, progress};
use crate::family::blocks::conv_layer;

/// The student: three strided 3x3 convolutions down to the features' grid (1/8 of the
/// input), two more 3x3 convolutions there so that each cell sees about 47 pixels around it
/// (the teacher's 1/16 stage sees further, which the student must partly guess from
/// context, as in EfficientAD), and a 1x1 projection to the teacher's channels; ReLU
/// between, no batch norm (one image scores as it would in any batch).
#[derive(Module, Debug)]
pub struct Student {
    convs: Vec<Conv2d>,
}

/// Stride of each of the student's convolutions.
const STRIDES: [usize; 6] = [2, 2, 2, 1, 1, 1];

impl Student {
    /// A new student predicting `channels` features, `width` channels at its widest (half of
    /// it in the first layer).
    pub fn new(channels: usize, width: usize, device: &Device) -> Student {
        let w = width.max(2);
        let shape = [(3, w / 2), (w / 2, w), (w, 2 * w), (2 * w, 2 * w), (2 * w, 2 * w), (2 * w, channels)];
        let convs = shape
            .iter()
            .zip(STRIDES)
            .enumerate()
            .map(|(i, (&(cin, cout), s))| {
                let k = if i + 1 == shape.len() { 1 } else { 3 };
                let p = k / 2;
                Conv2dConfig::new([cin, cout], [k, k])
                    .with_stride([s, s])
                    .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
                    .init(device)
            })
            .collect();
        Student { convs }
    }

    /// `[B, 3, h, w]` ImageNet-normalised images to `[B, C, h/8, w/8]` predicted features.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let last = self.convs.len() - 1;
        self.convs.iter().enumerate().fold(x, |x, (i, c)| if i == last { c.forward(x) } else { relu(c.forward(x)) })
    }

    /// The network for the ONNX writer.
    pub fn to_sequential(&self) -> Sequential {
        let last = self.convs.len() - 1;
        let mut layers = vec![];
        for (i, (c, s)) in self.convs.iter().zip(STRIDES).enumerate() {
            let k = c.weight.dims()[2];
            layers.push(conv_layer(c, s, k / 2));
            if i != last {
                layers.push(Layer::Relu);
            }
        }
        Sequential::new(layers)
    }
}

/// Training settings of the student.
#[derive(Debug, Clone, Copy)]
pub struct StudentTraining {
    /// Channels at the student's widest.
    pub width: usize,
    /// Optimisation steps.
    pub steps: usize,
    /// Images per step.
    pub batch: usize,
    /// Adam learning rate (divided by ten for the last fifth of the steps).
    pub lr: f64,
    /// Share of the largest squared errors of each step that the loss averages (1: all of
    /// them; EfficientAD's hard-feature loss takes the top 0.1%).
    pub hard_share: f32,
    /// Seed.
    pub seed: u64,
}

/// Trains the student to predict the standardised features `f` of `images` (`[3, h, w]`
/// preprocessed tensors of `input` = `[h, w]`, one block per image, in `f`'s order); `None`
/// when stopped. Returns
/// the network and the mean loss of each tenth of the steps.
pub fn train(
    f: &Features,
    (images, input): (&[f32], [usize; 2]),
    (mean, std): (&[f32], &[f32]),
    t: StudentTraining,
    device: &Device,
    stop: &AtomicBool,
    init: Option<Student>,
) -> anyhow::Result<Option<(Student, Vec<f64>)>> {
    let (c, [gh, gw]) = (f.shape.channels, f.shape.grid);
    let cells = gh * gw;
    let plane = 3 * input[0] * input[1];
    anyhow::ensure!(!f.is_empty() && images.len() == f.len() * plane, "no training images for the student");
    device.seed(t.seed);
    let mut model = match init {
        // `fork`, not `to_device`: see the feature autoencoder's retrain.
        Some(m) => m.fork(device),
        None => Student::new(c, t.width, device),
    };
    let mut opt = AdamConfig::new().init();
    let mut rng = Rng::new(mix(t.seed ^ 0x57d7));
    let batch = t.batch.clamp(1, f.len());
    let chunk = t.steps.div_ceil(10).max(1);
    let bar = progress(t.steps, "student");
    let (mut history, mut sum, mut count) = (vec![], 0f64, 0usize);
    let mut order: Vec<usize> = vec![];
    for step in 0..t.steps {
        if stop.load(Ordering::SeqCst) {
            bar.abandon();
            return Ok(None);
        }
        let mut chosen = Vec::with_capacity(batch);
        while chosen.len() < batch {
            if order.is_empty() {
                order = (0..f.len()).collect();
                rng.shuffle(&mut order);
            }
            chosen.push(order.pop().expect("refilled"));
        }
        let mut x = Vec::with_capacity(batch * plane);
        let mut target = Vec::with_capacity(batch * c * cells);
        for &i in &chosen {
            x.extend_from_slice(&images[i * plane..(i + 1) * plane]);
            let img = f.image(i);
            for ch in 0..c {
                target.extend(img[ch * cells..(ch + 1) * cells].iter().map(|v| (v - mean[ch]) / std[ch]));
            }
        }
        let x = Tensor::<4>::from_data(TensorData::new(x, [batch, 3, input[0], input[1]]), device);
        let target = Tensor::<4>::from_data(TensorData::new(target, [batch, c, gh, gw]), device);
        let err = (model.forward(x) - target).powf_scalar(2.0);
        let loss = if t.hard_share < 1.0 {
            let flat: Tensor<1> = err.reshape([batch * c * cells]);
            let values = flat.clone().detach().try_into_vec_as::<f32>().expect("float errors");
            let mut sorted = values.clone();
            let keep = ((values.len() as f64 * t.hard_share as f64).ceil() as usize).clamp(1, values.len());
            let (_, cut, _) = sorted.select_nth_unstable_by(values.len() - keep, f32::total_cmp);
            let cut = *cut;
            let mask: Vec<f32> = values.iter().map(|&v| if v >= cut { 1.0 } else { 0.0 }).collect();
            let kept = mask.iter().sum::<f32>().max(1.0) as f64;
            let mask = Tensor::<1>::from_data(TensorData::new(mask, [batch * c * cells]), device);
            (flat * mask).sum() / kept
        } else {
            err.mean()
        };
        sum += loss.clone().into_scalar::<f32>() as f64;
        count += 1;
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let lr = if step >= t.steps * 4 / 5 { t.lr / 10.0 } else { t.lr };
        model = opt.step(lr, model, grads);
        bar.inc(1);
        if (step + 1) % chunk == 0 || step + 1 == t.steps {
            let mean_loss = sum / count as f64;
            tracing::info!("student step {}/{}: loss {mean_loss:.4}", step + 1, t.steps);
            history.push(mean_loss);
            (sum, count) = (0.0, 0);
        }
    }
    bar.finish_and_clear();
    Ok(Some((model, history)))
}

/// The student's own options (`train.toml`'s `student_width`, `student_steps`,
/// `student_batch`, `student_lr`, `student_hard_share`).
#[derive(Debug, Clone, PartialEq)]
pub struct StudentConfig {
    /// Channels at the student's widest (its cost grows with the square).
    pub width: usize,
    /// Optimisation steps.
    pub steps: usize,
    /// Images per step.
    pub batch: usize,
    /// Adam learning rate.
    pub lr: f64,
    /// Share of the largest squared errors of each step that the loss averages, in (0, 1].
    pub hard_share: f32,
}

impl Default for StudentConfig {
    fn default() -> Self {
        StudentConfig { width: 32, steps: 1500, batch: 8, lr: 1e-3, hard_share: 1.0 }
    }
}
