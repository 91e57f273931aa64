//! One epoch of training: the loader thread (batches, augmentation, synthetic defects) and
//! the steps of every family (autoencoders, GAN, WGAN-GP, the f-AnoGAN encoder).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::activation::softplus;
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use vigil_model::rng::{Rng, mix};

use super::augment::{augment_images, shift_images};
use super::checkpoint::Nets;
use super::images::{Images, input_spec};
use crate::config::{Corruption, TrainConfig};
use crate::family::autoencoder::ReconstructionLoss;
use crate::family::blocks::Encoder;
use crate::family::cond::Cond;
use crate::family::kind::ModelKind;
use crate::run::EpochLog;

/// Non-saturating GAN losses and the WGAN critic loss need the critic as `[B]`.
fn logits(critic: &Encoder, x: Tensor<4>) -> Tensor<1> {
    let b = x.dims()[0];
    critic.forward(x).reshape([b])
}

/// The WGAN-GP penalty `(‖∇ₓD(x̂)‖ − 1)²`. burn 0.22 has first-order autodiff only, so the
/// norm is the directional derivative along the (fixed) gradient direction, taken by a
/// central difference: by Danskin's theorem its gradient in the critic's weights is the
/// gradient of the norm itself, as ε → 0.
/// For a conditional critic the gradient is taken in the image only, the class planes fixed.
fn gradient_penalty(critic: &Encoder, real: Tensor<4>, fake: Tensor<4>, cond: Option<&Cond>) -> Tensor<1> {
    const EPS: f64 = 1e-2;
    let [b, c, h, w] = real.dims();
    let device = real.device();
    let alpha = Tensor::<4>::random([b, 1, 1, 1], Distribution::Uniform(0.0, 1.0), &device);
    let x_hat = (real * alpha.clone() + fake * (alpha.neg() + 1.0)).detach();
    let probe = x_hat.clone().require_grad();
    let grads = logits(critic, Cond::image(cond, probe.clone())).sum().backward();
    let g = probe.grad(&grads).expect("the probe tracks its gradient");
    let norm = g.clone().reshape([b, c * h * w]).powf_scalar(2.0).sum_dim(1).sqrt().clamp_min(1e-12);
    let u = (g / norm.reshape([b, 1, 1, 1])).autodiff();
    let plus = logits(critic, Cond::image(cond, x_hat.clone() + u.clone().mul_scalar(EPS)));
    let minus = logits(critic, Cond::image(cond, x_hat - u.mul_scalar(EPS)));
    (plus - minus).div_scalar(2.0 * EPS).sub_scalar(1.0).powf_scalar(2.0).mean()
}

/// A loss value kept on the device: reading it back waits for the device, so the loop reads
/// sums only now and then instead of every step.
fn kept(t: Tensor<1>) -> Tensor<1> {
    t.detach()
}

pub(super) fn read(t: &Tensor<1>) -> f64 {
    t.clone().into_scalar::<f32>() as f64
}

/// One epoch; `None` when stopped part-way.
#[allow(clippy::too_many_arguments)]
pub(super) fn run_epoch(
    cfg: &TrainConfig,
    nets: &mut Nets,
    images: &Images,
    batch: usize,
    phase: &str,
    epoch: u32,
    total: u32,
    device: &Device,
    stop: &AtomicBool,
) -> anyhow::Result<Option<EpochLog>> {
    // Seeded per epoch, so a resumed run draws what an uninterrupted one would.
    let epoch_seed = mix(cfg.seed ^ ((epoch as u64 + 1) << 32) ^ if phase == "train" { 0 } else { 0xE0C0 });
    device.seed(epoch_seed);
    let mut order: Vec<usize> = (0..images.len()).collect();
    Rng::new(epoch_seed).shuffle(&mut order);
    // Drop the last partial batch: batch norm on one or two images is noise.
    let steps = order.len() / batch;
    let bar = indicatif::ProgressBar::new(steps as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {per_sec} eta {eta} {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("{phase} epoch {}/{total}", epoch + 1));
    let started = Instant::now();
    let (c, s) = (cfg.channels.unwrap_or(3), cfg.size);
    // Batches are assembled (and, for streamed data, decoded) on a second thread, two ahead,
    // while the device trains on the current one.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Batch>(2);
    // Synthetic defects are for the autoencoders' own training, not the f-AnoGAN encoder's.
    let corrupt = phase == "train" && !cfg.model.is_gan() && cfg.corruption == Corruption::Synthetic;
    std::thread::scope(|scope| -> anyhow::Result<Option<EpochLog>> {
        let order = &order;
        scope.spawn(move || {
            let mut rng = Rng::new(mix(epoch_seed ^ 0x5A1F7));
            for step in 0..steps {
                let mut data = images.batch(&order[step * batch..(step + 1) * batch]);
                augment_images(&mut data, [batch, c, s, s], &cfg.augment, &mut rng);
                if cfg.augment.shift > 0 {
                    shift_images(&mut data, [batch, c, s, s], cfg.augment.shift, &mut rng);
                }
                let input = corrupt.then(|| crate::data::corrupt::corrupt_batch(&data, [batch, c, s, s], &mut rng));
                let labels = images.labels(&order[step * batch..(step + 1) * batch]);
                if tx.send(Batch { target: data, input, labels }).is_err() {
                    break; // the epoch stopped early
                }
            }
        });
        run_steps(cfg, nets, rx, [batch, c, s, s], steps, phase, epoch, total, device, stop, &bar, started)
    })
}

/// A CycleGAN generator as the corruption: the model's inputs are normalised
/// (`input_spec`'s mean and std), the generator's are pixel levels in 0..1.
struct CycleCorruption {
    translator: crate::family::cyclegan::augment::Translator,
    mean: Tensor<4>,
    std: Tensor<4>,
}

impl CycleCorruption {
    fn new(cfg: &TrainConfig, run: &std::path::Path, channels: usize, device: &Device) -> anyhow::Result<Self> {
        let translator = crate::family::cyclegan::augment::corruption(run, cfg.size, channels, device)?;
        let spec = input_spec(cfg, channels);
        let per_channel = |v: &[f32]| Tensor::<4>::from_data(TensorData::new(v.to_vec(), [1, channels, 1, 1]), device);
        Ok(CycleCorruption { translator, mean: per_channel(&spec.mean), std: per_channel(&spec.std) })
    }

    fn corrupt(&self, x: Tensor<4>) -> Tensor<4> {
        let unit = x.detach() * self.std.clone() + self.mean.clone();
        ((self.translator.translate_tensor(unit) - self.mean.clone()) / self.std.clone()).detach()
    }
}

/// One batch from the loader thread: the images, and the network's input when it differs
/// (the images with synthetic defects).
struct Batch {
    target: Vec<f32>,
    input: Option<Vec<f32>>,
    /// Each image's class (conditional models; else empty).
    labels: Vec<usize>,
}

/// The steps of one epoch, fed by the loader thread; `None` when stopped part-way.
#[allow(clippy::too_many_arguments)]
fn run_steps(
    cfg: &TrainConfig,
    nets: &mut Nets,
    batches: std::sync::mpsc::Receiver<Batch>,
    dims: [usize; 4],
    steps: usize,
    phase: &str,
    epoch: u32,
    total: u32,
    device: &Device,
    stop: &AtomicBool,
    bar: &indicatif::ProgressBar,
    started: Instant,
) -> anyhow::Result<Option<EpochLog>> {
    let batch = dims[0];
    let cyclegan = match &cfg.corruption {
        Corruption::CycleGan(run) if phase == "train" && !cfg.model.is_gan() => {
            Some(CycleCorruption::new(cfg, run, dims[1], device)?)
        }
        _ => None,
    };
    // Per loss: the sum on the device and how many steps reported it (a WGAN generator
    // loss comes every n_critic steps only).
    let mut sums: Vec<(&'static str, Tensor<1>, usize)> = vec![];
    for step in 0..steps {
        if stop.load(Ordering::SeqCst) {
            bar.abandon();
            return Ok(None);
        }
        let data = batches.recv().map_err(|_| anyhow::anyhow!("the data loader thread stopped"))?;
        let x = Tensor::<4>::from_data(TensorData::new(data.target, dims), device);
        let input = data.input.map(|i| Tensor::<4>::from_data(TensorData::new(i, dims), device));
        let input = input.or_else(|| cyclegan.as_ref().map(|g| g.corrupt(x.clone())));
        let cond = Cond::new(&data.labels, cfg.classes.len(), device);
        for (key, value) in train_step(cfg, nets, x, input, cond.as_ref(), phase, step)? {
            match sums.iter_mut().find(|(k, _, _)| *k == key) {
                Some((_, sum, n)) => {
                    *sum = sum.clone() + value;
                    *n += 1;
                }
                None => sums.push((key, value, 1)),
            }
        }
        if step % 20 == 19 || step + 1 == steps {
            bar.set_message(
                sums.iter().map(|(k, v, n)| format!("{k} {:.5}", read(v) / *n as f64)).collect::<Vec<_>>().join(" "),
            );
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    let log = EpochLog {
        phase: phase.into(),
        epoch: epoch + 1,
        losses: sums.iter().map(|(k, v, n)| (k.to_string(), read(v) / *n as f64)).collect(),
        samples_per_s: (steps * batch) as f64 / secs.max(1e-9),
    };
    tracing::info!(
        "{phase} epoch {}/{total}: {} ({:.1} images/s)",
        epoch + 1,
        log.losses.iter().map(|(k, v)| format!("{k} {v:.5}")).collect::<Vec<_>>().join(", "),
        log.samples_per_s
    );
    Ok(Some(log))
}

/// The autoencoders' reconstruction term; SSIM's constants are those the exported map uses.
fn reconstruction_loss(cfg: &TrainConfig, recon: Tensor<4>, x: Tensor<4>) -> Tensor<1> {
    let l2 = (recon.clone() - x.clone()).powf_scalar(2.0).mean();
    match cfg.autoencoder.loss {
        ReconstructionLoss::L2 => l2,
        ReconstructionLoss::SsimL2 => {
            let range = input_spec(cfg, x.dims()[1]).dynamic_range();
            l2 - crate::train::ssim::mean_ssim(recon, x, &range).sub_scalar(1.0)
        }
    }
}

/// One step of `nets`; `cond` is the batch's classes for a conditional model.
pub(super) fn train_step(
    cfg: &TrainConfig,
    nets: &mut Nets,
    x: Tensor<4>,
    input: Option<Tensor<4>>,
    cond: Option<&Cond>,
    phase: &str,
    step: usize,
) -> anyhow::Result<Vec<(&'static str, Tensor<1>)>> {
    let device = x.device();
    let [b, c, h, w] = x.dims();
    let lr = cfg.lr;
    let latent = cfg.latent;
    Ok(match nets {
        Nets::Ae { model, opt } => {
            if cfg.model == ModelKind::Dae {
                let noisy = match (input, &cfg.corruption) {
                    (Some(i), _) => i,
                    (None, Corruption::Gaussian) => {
                        x.clone()
                            + Tensor::<4>::random(
                                [b, c, h, w],
                                Distribution::Normal(0.0, cfg.autoencoder.noise_sigma as f64),
                                &device,
                            )
                    }
                    (None, _) => x.clone(),
                };
                let z = model.encoder.forward(Cond::image(cond, noisy));
                let recon = model.decoder.forward(Cond::latent(cond, z));
                let loss = reconstruction_loss(cfg, recon, x);
                let value = kept(loss.clone());
                let grads = GradientsParams::from_grads(loss.backward(), &*model);
                *model = opt.step(lr, model.clone(), grads);
                vec![("loss", value)]
            } else {
                let hidden = model.encoder.forward(Cond::image(cond, input.unwrap_or_else(|| x.clone()))); // [B, 2L, 1, 1]
                let mu = hidden.clone().narrow(1, 0, latent);
                let logvar = hidden.narrow(1, latent, latent).clamp(-10.0, 10.0);
                let eps = Tensor::<4>::random([b, latent, 1, 1], Distribution::Normal(0.0, 1.0), &device);
                let z = mu.clone() + logvar.clone().mul_scalar(0.5).exp() * eps;
                let rec = reconstruction_loss(cfg, model.decoder.forward(Cond::latent(cond, z)), x);
                let kl = (logvar.clone().add_scalar(1.0) - mu.powf_scalar(2.0) - logvar.exp())
                    .sum_dim(1)
                    .mean()
                    .mul_scalar(-0.5);
                let loss = rec.clone() + kl.clone().mul_scalar(cfg.autoencoder.kl_weight as f64 / (c * h * w) as f64);
                let values = (kept(loss.clone()), kept(rec), kept(kl));
                let grads = GradientsParams::from_grads(loss.backward(), &*model);
                *model = opt.step(lr, model.clone(), grads);
                vec![("loss", values.0), ("reconstruction", values.1), ("kl", values.2)]
            }
        }
        Nets::Gan { generator, critic, encoder, opt_g, opt_d, opt_e } if phase == "train" => {
            // A conditional GAN makes fakes of the batch's own classes, and its critic judges
            // each image with its class.
            let z = Tensor::<4>::random([b, latent, 1, 1], Distribution::Normal(0.0, 1.0), &device);
            let fake = generator.forward(Cond::latent(cond, z)).detach();
            let judge = |x: Tensor<4>| logits(critic, Cond::image(cond, x));
            let (d_loss, gp) = if cfg.model == ModelKind::Gan {
                let l = softplus(judge(x.clone()).neg(), 1.0).mean() + softplus(judge(fake), 1.0).mean();
                (l, None)
            } else {
                let gp = gradient_penalty(critic, x.clone(), fake.clone(), cond);
                let l = judge(fake).mean() - judge(x.clone()).mean() + gp.clone().mul_scalar(cfg.gan.gp_weight as f64);
                (l, Some(kept(gp)))
            };
            let d_value = kept(d_loss.clone());
            let grads = GradientsParams::from_grads(d_loss.backward(), &*critic);
            *critic = opt_d.step(lr, critic.clone(), grads);
            let n_critic = if cfg.model == ModelKind::Wgan { cfg.gan.n_critic } else { 1 };
            let mut out = vec![("d_loss", d_value)];
            if step.is_multiple_of(n_critic) {
                let z = Tensor::<4>::random([b, latent, 1, 1], Distribution::Normal(0.0, 1.0), &device);
                let fake_logits = logits(critic, Cond::image(cond, generator.forward(Cond::latent(cond, z))));
                let g_loss = if cfg.model == ModelKind::Gan {
                    softplus(fake_logits.neg(), 1.0).mean()
                } else {
                    fake_logits.mean().neg()
                };
                let g_value = kept(g_loss.clone());
                let mut grads = g_loss.backward();
                let grads = GradientsParams::from_module(&mut grads, &*generator);
                *generator = opt_g.step(lr, generator.clone(), grads);
                out.push(("g_loss", g_value));
            }
            if let Some(gp) = gp {
                out.push(("gp", gp));
            }
            let _ = encoder;
            let _ = opt_e;
            out
        }
        Nets::Gan { generator, critic, encoder, opt_e, .. } => {
            // f-AnoGAN izi_f: the generator and critic are fixed (eval-mode batch norm).
            let (g, d) = (generator.clone().freeze(), critic.clone().freeze());
            let z = encoder.forward(Cond::image(cond, x.clone()));
            let recon = g.forward(Cond::latent(cond, z));
            let pixel = (recon.clone() - x.clone()).powf_scalar(2.0).mean();
            let feature =
                (d.features(Cond::image(cond, recon)) - d.features(Cond::image(cond, x))).powf_scalar(2.0).mean();
            let loss = pixel.clone() + feature.clone().mul_scalar(cfg.gan.feature_weight as f64);
            let values = (kept(loss.clone()), kept(pixel), kept(feature));
            let mut grads = loss.backward();
            let grads = GradientsParams::from_module(&mut grads, &*encoder);
            *encoder = opt_e.step(lr, encoder.clone(), grads);
            vec![("e_loss", values.0), ("pixel", values.1), ("feature", values.2)]
        }
    })
}
