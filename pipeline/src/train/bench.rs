//! `vigil-train bench-train`: training speed of the reference architecture on random data,
//! in the form of `shared/bench/reference_torch.py`.

use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Tensor, TensorData};
use serde::Serialize;
use vigil_model::rng::Rng;

use super::checkpoint::Nets;
use super::step::{read, train_step};
use crate::config::{Corruption, TrainConfig};
use crate::device::{DeviceChoice, choose};
use crate::family::gan::GanConfig;
use crate::family::kind::ModelKind;
use crate::run::RunDir;

/// What one training benchmark measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    /// Family.
    pub model: ModelKind,
    /// The device, as [`choose`] describes it.
    pub device: String,
    /// Images per step.
    pub batch: usize,
    /// Timed steps.
    pub steps: usize,
    /// Trainable parameters.
    pub params: usize,
    /// Images per second over the timed steps.
    pub samples_per_s: f64,
    /// Milliseconds per step.
    pub ms_per_step: f64,
}

/// Times training steps of the reference architecture (3x128x128, latent 128) on random
/// data, as `shared/bench/reference_torch.py` does: 3 warm-up steps, then `steps` timed
/// ones; a GAN step is one discriminator and one generator update.
pub fn bench(model: ModelKind, batch: usize, steps: usize, device: DeviceChoice) -> anyhow::Result<BenchResult> {
    let _turn = super::turn::TRAINING.lock().unwrap_or_else(|p| p.into_inner());
    // Gaussian noise, as reference_torch.py's DAE: the same arithmetic on both sides.
    let cfg = TrainConfig {
        model,
        batch,
        size: crate::config::default_size(model),
        channels: Some(3),
        gan: GanConfig { n_critic: 1, ..GanConfig::default() },
        corruption: Corruption::Gaussian,
        ..TrainConfig::default()
    };
    cfg.validate()?;
    let chosen = choose(device)?;
    let device = chosen.device;
    device.seed(0);
    let scratch = RunDir(std::env::temp_dir().join("vigil-bench-unused"));
    let mut nets = Nets::new(&cfg, 3, &device, &scratch, false)?;
    let mut rng = Rng::new(0);
    let data: Vec<f32> = (0..batch * 3 * cfg.size * cfg.size).map(|_| rng.uniform()).collect();
    let x = Tensor::<4>::from_data(TensorData::new(data, [batch, 3, cfg.size, cfg.size]), &device);
    let params = match &nets {
        Nets::Ae { model, .. } => model.num_params(),
        Nets::Gan { generator, critic, .. } => generator.num_params() + critic.num_params(),
    };
    for step in 0..3 {
        for (_, v) in train_step(&cfg, &mut nets, x.clone(), None, None, "train", step)? {
            read(&v);
        }
    }
    let started = Instant::now();
    let mut last = vec![];
    for step in 0..steps {
        last = train_step(&cfg, &mut nets, x.clone(), None, None, "train", step)?;
    }
    // Reading the last losses waits for every queued step, as torch.cuda.synchronize does.
    for (_, v) in &last {
        read(v);
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(BenchResult {
        model,
        device: chosen.description,
        batch,
        steps,
        params,
        samples_per_s: (batch * steps) as f64 / secs,
        ms_per_step: 1000.0 * secs / steps as f64,
    })
}
