//! Training a CycleGAN: both generators and discriminators, one epoch after another, with a
//! checkpoint, the losses and a sample grid after each.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, bail};
use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor, TensorData};
use vigil_model::preprocess::Preprocessor;
use vigil_model::rng::{Rng, mix};

use crate::data::sets::{Skipped, list_images, load_image};
use crate::device::{DeviceChoice, choose};
use crate::family::cyclegan::config::{CONFIG_FILE, CycleConfig, CycleState, GENERATOR, STATE_FILE, load_config};
use crate::family::cyclegan::nets::{Discriminator, Generator};
use crate::family::cyclegan::pool::ImagePool;
use crate::run::{EpochLog, Outcome, RunDir, restore_module, restore_opt, save_module, save_opt};

/// Both generators (normal → defect and back), trained with one optimizer.
#[derive(Module, Debug)]
pub struct Generators {
    /// Normal → defective.
    pub to_defect: Generator,
    /// Defective → normal.
    pub to_normal: Generator,
}

/// Both discriminators.
#[derive(Module, Debug)]
pub struct Discriminators {
    /// Real normal images against translated ones.
    pub normal: Discriminator,
    /// Real defective images against translated ones.
    pub defect: Discriminator,
}

/// A training request.
#[derive(Debug, Clone)]
pub struct CycleRequest {
    /// Settings (ignored on resume).
    pub config: CycleConfig,
    /// Normal images (ignored on resume).
    pub normal: PathBuf,
    /// Defective images (ignored on resume).
    pub defect: PathBuf,
    /// The run folder.
    pub run: RunDir,
    /// Where to train.
    pub device: DeviceChoice,
    /// Continue the run in `run`.
    pub resume: bool,
}

fn adam(cfg: &CycleConfig) -> ModuleOptimizer {
    AdamConfig::new().with_beta_1(cfg.beta1).with_beta_2(0.999).with_epsilon(1e-8).init()
}

/// Images in memory as `[-1, 1]` tensors' data, `per` values each.
struct Images {
    per: usize,
    data: Vec<f32>,
}

impl Images {
    fn load(pre: &Preprocessor, paths: &[PathBuf], skipped: &mut Vec<Skipped>) -> Images {
        let [c, h, w] = pre.chw();
        let mut data = vec![];
        for p in paths {
            match load_image(pre, p) {
                Ok(t) => data.extend(t.into_iter().next().unwrap_or_default().into_iter().map(|v| v * 2.0 - 1.0)),
                Err(reason) => {
                    tracing::warn!("skipping {}: {reason}", p.display());
                    skipped.push(Skipped { path: p.clone(), reason });
                }
            }
        }
        Images { per: c * h * w, data }
    }

    fn len(&self) -> usize {
        self.data.len() / self.per
    }

    /// Images `idx`, each flipped left-right with probability 1/2.
    fn batch(&self, idx: &[usize], side: usize, rng: &mut Rng) -> Vec<f32> {
        let mut out = Vec::with_capacity(idx.len() * self.per);
        for &i in idx {
            let img = &self.data[i * self.per..(i + 1) * self.per];
            if rng.uniform() < 0.5 {
                for row in img.chunks(side) {
                    out.extend(row.iter().rev());
                }
            } else {
                out.extend_from_slice(img);
            }
        }
        out
    }
}

fn mse_to(x: Tensor<4>, target: f32) -> Tensor<1> {
    x.sub_scalar(target).powf_scalar(2.0).mean()
}

fn l1(a: Tensor<4>, b: Tensor<4>) -> Tensor<1> {
    (a - b).abs().mean()
}

/// Trains (or resumes) a CycleGAN until every epoch is done or `stop` is set.
pub fn train(req: &CycleRequest, stop: &AtomicBool) -> anyhow::Result<Outcome> {
    let run = &req.run;
    let (cfg, mut state) = if req.resume {
        (load_config(run)?, CycleState::load(run)?)
    } else {
        let cfg = req.config.clone();
        cfg.validate()?;
        if run.0.join(STATE_FILE).exists() {
            bail!("{} already holds a CycleGAN run; pass --resume to continue it, or another --out", run.0.display());
        }
        let normal = list_images(&req.normal)?;
        anyhow::ensure!(!normal.is_empty(), "--normal {}: no images", req.normal.display());
        let channels = cfg.channels.unwrap_or_else(|| crate::data::sets::detect_channels(&normal));
        std::fs::create_dir_all(run.0.join("checkpoint")).with_context(|| format!("creating {}", run.0.display()))?;
        let cfg = CycleConfig { channels: Some(channels), ..cfg };
        std::fs::write(run.0.join(CONFIG_FILE), toml::to_string(&cfg)?)?;
        let state = CycleState {
            normal: req.normal.clone(),
            defect: req.defect.clone(),
            channels,
            epochs_done: 0,
            device: String::new(),
            history: vec![],
            skipped: vec![],
            seconds: 0.0,
        };
        (cfg, state)
    };
    let chosen = choose(req.device)?;
    state.device = chosen.description.clone();
    let device = chosen.device;
    let pre = Preprocessor::new(&cfg.input(state.channels));
    let mut skipped = vec![];
    let normal = Images::load(&pre, &list_images(&state.normal)?, &mut skipped);
    let defect = Images::load(&pre, &list_images(&state.defect)?, &mut skipped);
    state.skipped = skipped;
    anyhow::ensure!(normal.len() >= 1, "{}: no readable normal image", state.normal.display());
    anyhow::ensure!(defect.len() >= 1, "{}: no readable defective image", state.defect.display());
    tracing::info!(
        "CycleGAN: {} normal and {} defective images at {}x{}, {} epochs of {} steps on {}",
        normal.len(),
        defect.len(),
        cfg.size,
        cfg.size,
        cfg.epochs,
        cfg.steps_per_epoch,
        state.device
    );
    let spec = cfg.spec(state.channels);
    let resume = req.resume && state.epochs_done > 0;
    let mut gens = Generators { to_defect: Generator::new(&spec, &device), to_normal: Generator::new(&spec, &device) };
    let mut discs =
        Discriminators { normal: Discriminator::new(&spec, &device), defect: Discriminator::new(&spec, &device) };
    let (mut opt_g, mut opt_d) = (adam(&cfg), adam(&cfg));
    if resume {
        gens = restore_module(gens, run, "generators")?;
        discs = restore_module(discs, run, "discriminators")?;
        opt_g = restore_opt(opt_g, run, "adam_generators")?;
        opt_d = restore_opt(opt_d, run, "adam_discriminators")?;
    } else {
        device.seed(cfg.seed);
    }
    // The buffers start empty on resume: they refill within the first 50 steps.
    let mut pool_normal = ImagePool::new(cfg.pool_size, mix(cfg.seed ^ 0xA));
    let mut pool_defect = ImagePool::new(cfg.pool_size, mix(cfg.seed ^ 0xB));
    let started = Instant::now();
    let seconds_before = state.seconds;
    let dims = [cfg.batch, state.channels, cfg.size, cfg.size];
    for epoch in state.epochs_done..cfg.epochs {
        let seed = mix(cfg.seed ^ ((epoch as u64 + 1) << 32));
        device.seed(seed);
        let mut rng = Rng::new(seed);
        let lr = cfg.lr_at(epoch);
        let bar = crate::family::features::extract::progress(
            cfg.steps_per_epoch,
            &format!("cyclegan epoch {}/{}", epoch + 1, cfg.epochs),
        );
        let epoch_started = Instant::now();
        let mut sums: Vec<(&'static str, f64)> = vec![];
        let mut order: Vec<usize> = vec![];
        for _ in 0..cfg.steps_per_epoch {
            if stop.load(Ordering::SeqCst) {
                bar.abandon();
                save_all(run, &gens, &discs, &opt_g, &opt_d)?;
                state.seconds = seconds_before + started.elapsed().as_secs_f64();
                state.save(run)?;
                tracing::info!("stopped: checkpoint saved in {}; continue with --resume", run.0.display());
                return Ok(Outcome::Interrupted);
            }
            let mut idx = Vec::with_capacity(cfg.batch);
            for _ in 0..cfg.batch {
                if order.is_empty() {
                    order = (0..normal.len()).collect();
                    rng.shuffle(&mut order);
                }
                idx.push(order.pop().expect("refilled"));
            }
            let didx: Vec<usize> = (0..cfg.batch).map(|_| rng.below(defect.len())).collect();
            let a = Tensor::<4>::from_data(TensorData::new(normal.batch(&idx, cfg.size, &mut rng), dims), &device);
            let b = Tensor::<4>::from_data(TensorData::new(defect.batch(&didx, cfg.size, &mut rng), dims), &device);
            let losses = step(
                &cfg,
                &mut gens,
                &mut discs,
                &mut opt_g,
                &mut opt_d,
                (&mut pool_normal, &mut pool_defect),
                a,
                b,
                lr,
            );
            for (k, v) in losses {
                match sums.iter_mut().find(|(n, _)| *n == k) {
                    Some((_, s)) => *s += v,
                    None => sums.push((k, v)),
                }
            }
            bar.inc(1);
        }
        bar.finish_and_clear();
        let n = cfg.steps_per_epoch as f64;
        let log = EpochLog {
            phase: "train".into(),
            epoch: epoch + 1,
            losses: sums.iter().map(|(k, v)| (k.to_string(), v / n)).collect(),
            samples_per_s: (cfg.steps_per_epoch * cfg.batch) as f64 / epoch_started.elapsed().as_secs_f64().max(1e-9),
        };
        tracing::info!(
            "cyclegan epoch {}/{}: {} ({:.2} steps/s, lr {lr:.2e})",
            epoch + 1,
            cfg.epochs,
            log.losses.iter().map(|(k, v)| format!("{k} {v:.4}")).collect::<Vec<_>>().join(", "),
            log.samples_per_s / cfg.batch as f64
        );
        crate::run::append_losses(run, &log)?;
        state.history.push(log);
        crate::run::save_loss_chart(run, &state.history)?;
        let samples = run.0.join("samples");
        std::fs::create_dir_all(&samples)?;
        let path = samples.join(format!("epoch-{:03}.png", epoch + 1));
        sample_grid(&cfg, &gens, &normal, &defect, state.channels, &device)
            .save(&path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        state.epochs_done = epoch + 1;
        state.seconds = seconds_before + started.elapsed().as_secs_f64();
        save_all(run, &gens, &discs, &opt_g, &opt_d)?;
        state.save(run)?;
    }
    Ok(Outcome::Finished)
}

fn save_all(
    run: &RunDir,
    gens: &Generators,
    discs: &Discriminators,
    opt_g: &ModuleOptimizer,
    opt_d: &ModuleOptimizer,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(run.0.join("checkpoint"))?;
    save_module(gens, run, "generators")?;
    save_module(&gens.to_defect, run, GENERATOR)?;
    save_module(discs, run, "discriminators")?;
    save_opt(opt_g, run, "adam_generators")?;
    save_opt(opt_d, run, "adam_discriminators")
}

/// One step: the generators against the discriminators (least squares), cycle and identity
/// losses; then the discriminators on real images and buffered fakes. Returns the losses.
#[allow(clippy::too_many_arguments)]
fn step(
    cfg: &CycleConfig,
    gens: &mut Generators,
    discs: &mut Discriminators,
    opt_g: &mut ModuleOptimizer,
    opt_d: &mut ModuleOptimizer,
    pools: (&mut ImagePool, &mut ImagePool),
    a: Tensor<4>,
    b: Tensor<4>,
    lr: f64,
) -> Vec<(&'static str, f64)> {
    let (g, f) = (&gens.to_defect, &gens.to_normal);
    let fake_b = g.forward(a.clone());
    let fake_a = f.forward(b.clone());
    let rec_a = f.forward(fake_b.clone());
    let rec_b = g.forward(fake_a.clone());
    // The discriminators' gradients from this loss are computed but not applied: only the
    // generators' parameters are stepped. (Freezing a clone would freeze the shared parameters.)
    let adv = mse_to(discs.defect.forward(fake_b.clone()), 1.0) + mse_to(discs.normal.forward(fake_a.clone()), 1.0);
    let cycle = l1(rec_a, a.clone()) + l1(rec_b, b.clone());
    let mut loss_g = adv.clone() + cycle.clone().mul_scalar(cfg.lambda_cycle as f64);
    let identity_weight = (cfg.lambda_cycle * cfg.identity) as f64;
    let identity =
        (identity_weight > 0.0).then(|| l1(g.forward(b.clone()), b.clone()) + l1(f.forward(a.clone()), a.clone()));
    if let Some(idt) = &identity {
        loss_g = loss_g + idt.clone().mul_scalar(identity_weight);
    }
    let values = (adv.detach(), cycle.detach(), identity.map(|i| i.detach()));
    let grads = GradientsParams::from_grads(loss_g.backward(), &*gens);
    *gens = opt_g.step(lr, gens.clone(), grads);

    let fake_b = pools.1.query(fake_b.detach());
    let fake_a = pools.0.query(fake_a.detach());
    let loss_d = (mse_to(discs.defect.forward(b), 1.0) + mse_to(discs.defect.forward(fake_b), 0.0)).mul_scalar(0.5)
        + (mse_to(discs.normal.forward(a), 1.0) + mse_to(discs.normal.forward(fake_a), 0.0)).mul_scalar(0.5);
    let d_value = loss_d.clone().detach();
    let grads = GradientsParams::from_grads(loss_d.backward(), &*discs);
    *discs = opt_d.step(lr, discs.clone(), grads);
    let read = |t: Tensor<1>| t.into_scalar::<f32>() as f64;
    let mut out = vec![("g_adv", read(values.0)), ("cycle", read(values.1)), ("d_loss", read(d_value))];
    if let Some(i) = values.2 {
        out.push(("identity", read(i)));
    }
    out
}

/// Up to four normal images with their translation and its way back, beside up to four
/// defective ones with theirs: rows of `[x, translated, back]`.
fn sample_grid(
    cfg: &CycleConfig,
    gens: &Generators,
    normal: &Images,
    defect: &Images,
    channels: usize,
    device: &Device,
) -> image::RgbImage {
    let s = cfg.size;
    let gens = gens.clone().valid();
    let rows = |images: &Images, there: &Generator, back: &Generator| -> Vec<[Vec<f32>; 3]> {
        let n = images.len().min(4);
        if n == 0 {
            return vec![];
        }
        let idx: Vec<usize> = (0..n).map(|i| i * images.len() / n).collect();
        let data: Vec<f32> =
            idx.iter().flat_map(|&i| images.data[i * images.per..(i + 1) * images.per].iter().copied()).collect();
        let x = Tensor::<4>::from_data(TensorData::new(data.clone(), [n, channels, s, s]), device);
        let t = there.forward(x);
        let r = back.forward(t.clone());
        let t: Vec<f32> = t.into_data().try_to_vec::<f32>().unwrap_or_default();
        let r: Vec<f32> = r.into_data().try_to_vec::<f32>().unwrap_or_default();
        let per = images.per;
        (0..n)
            .map(|k| {
                [
                    data[k * per..(k + 1) * per].to_vec(),
                    t[k * per..(k + 1) * per].to_vec(),
                    r[k * per..(k + 1) * per].to_vec(),
                ]
            })
            .collect()
    };
    let mut all = rows(normal, &gens.to_defect, &gens.to_normal);
    all.extend(rows(defect, &gens.to_normal, &gens.to_defect));
    let mut img = image::RgbImage::new((3 * s) as u32, (all.len().max(1) * s) as u32);
    for (row, cells) in all.iter().enumerate() {
        for (col, cell) in cells.iter().enumerate() {
            for y in 0..s {
                for x in 0..s {
                    let v = |c: usize| {
                        let c = c.min(channels - 1);
                        ((cell[c * s * s + y * s + x] + 1.0) * 127.5).clamp(0.0, 255.0) as u8
                    };
                    img.put_pixel((col * s + x) as u32, (row * s + y) as u32, image::Rgb([v(0), v(1), v(2)]));
                }
            }
        }
    }
    img
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(values: &[f32]) -> Tensor<4> {
        Tensor::<4>::from_data(TensorData::new(values.to_vec(), [1, 1, 1, values.len()]), &Device::flex())
    }

    fn value(x: Tensor<1>) -> f32 {
        x.into_scalar::<f32>()
    }

    #[test]
    fn the_losses_have_the_papers_values_on_fixed_tensors() {
        // Least squares: mean((x - target)^2).
        assert!((value(mse_to(t(&[1.0, 0.5, -1.0, 0.0]), 1.0)) - (0.0 + 0.25 + 4.0 + 1.0) / 4.0).abs() < 1e-6);
        assert!((value(mse_to(t(&[0.2, -0.2]), 0.0)) - 0.04).abs() < 1e-6);
        // Cycle and identity: mean |a - b|.
        assert!((value(l1(t(&[1.0, -1.0, 0.5]), t(&[0.0, 0.0, 0.5]))) - 2.0 / 3.0).abs() < 1e-6);
    }

    #[test]
    fn the_learning_rate_is_constant_then_falls_linearly_to_zero() {
        let cfg = CycleConfig { epochs: 4, lr: 1.0, ..CycleConfig::default() };
        let lrs: Vec<f64> = (0..4).map(|e| cfg.lr_at(e)).collect();
        assert_eq!(lrs, [1.0, 1.0, 1.0, 0.5]);
        let cfg = CycleConfig { epochs: 12, lr: 2e-4, ..CycleConfig::default() };
        assert_eq!(cfg.lr_at(5), 2e-4);
        assert!(cfg.lr_at(11) > 0.0 && cfg.lr_at(11) < cfg.lr_at(6));
    }

    #[test]
    fn the_pool_returns_new_fakes_until_full_then_mixes_in_stored_ones() {
        let device = Device::flex();
        let img = |v: f32| Tensor::<4>::from_data(TensorData::new(vec![v], [1, 1, 1, 1]), &device);
        let mut pool = ImagePool::new(3, 7);
        for v in 0..3 {
            assert_eq!(pool.query(img(v as f32)).into_scalar::<f32>(), v as f32);
        }
        let mut old = 0;
        for v in 10..110 {
            let got = pool.query(img(v as f32)).into_scalar::<f32>();
            if got != v as f32 {
                old += 1;
                assert!(got < v as f32, "a stored image is an older one");
            }
        }
        assert!((30..=70).contains(&old), "about half are stored ones: {old}");
        let mut none = ImagePool::new(0, 1);
        assert_eq!(none.query(img(5.0)).into_scalar::<f32>(), 5.0);
    }
}
