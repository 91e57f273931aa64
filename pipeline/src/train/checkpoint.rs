//! Checkpoints: every family's networks and Adam states, saved as burnpack files (which keep
//! parameter ids, so resumed Adam moments line up), loaded to resume, to fine-tune from a
//! bundle's weights, or to export.

use std::path::Path;

use burn::module::Module;
use burn::optim::{AdamConfig, ModuleOptimizer};
use burn::tensor::Device;

use crate::config::TrainConfig;
use crate::family::autoencoder::Autoencoder;
use crate::family::blocks::{Decoder, Encoder};
use crate::family::gan::GanModel;
use crate::family::kind::ModelKind;
use crate::family::trained::Trained;
use crate::run::{RunDir, restore_module, restore_opt, save_module, save_opt};

fn adam(cfg: &TrainConfig) -> AdamConfig {
    AdamConfig::new().with_beta_1(cfg.beta1).with_beta_2(cfg.beta2).with_epsilon(1e-8)
}

fn load_opt(cfg: &TrainConfig, run: &RunDir, name: &str, resume: bool) -> anyhow::Result<ModuleOptimizer> {
    let opt = adam(cfg).init();
    if resume && run.checkpoint(name).exists() {
        return restore_opt(opt, run, name);
    }
    Ok(opt)
}

fn load_module<M: Module>(m: M, run: &RunDir, name: &str, resume: bool) -> anyhow::Result<M> {
    if resume && run.checkpoint(name).exists() {
        return restore_module(m, run, name);
    }
    Ok(m)
}

/// All networks and optimizers of one family during training (one value per run, so the
/// size difference of the variants does not matter).
#[allow(clippy::large_enum_variant)]
pub(super) enum Nets {
    Ae {
        model: Autoencoder,
        opt: ModuleOptimizer,
    },
    Gan {
        generator: Decoder,
        critic: Encoder,
        encoder: Encoder,
        opt_g: ModuleOptimizer,
        opt_d: ModuleOptimizer,
        opt_e: ModuleOptimizer,
    },
}

impl Nets {
    pub(super) fn new(
        cfg: &TrainConfig,
        channels: usize,
        device: &Device,
        run: &RunDir,
        resume: bool,
    ) -> anyhow::Result<Nets> {
        let spec = cfg.arch(channels);
        Ok(match cfg.model {
            ModelKind::Dae | ModelKind::Vae => Nets::Ae {
                model: load_module(Autoencoder::new(&spec, cfg.model == ModelKind::Vae, device), run, "model", resume)?,
                opt: load_opt(cfg, run, "adam", resume)?,
            },
            ModelKind::Gan | ModelKind::Wgan => {
                let g = GanModel::new(&spec, cfg.model, device);
                Nets::Gan {
                    generator: load_module(g.generator, run, "generator", resume)?,
                    critic: load_module(g.critic, run, "critic", resume)?,
                    encoder: load_module(g.encoder, run, "encoder", resume)?,
                    opt_g: load_opt(cfg, run, "adam_generator", resume)?,
                    opt_d: load_opt(cfg, run, "adam_critic", resume)?,
                    opt_e: load_opt(cfg, run, "adam_encoder", resume)?,
                }
            }
            kind @ (ModelKind::Padim
            | ModelKind::Patchcore
            | ModelKind::Fae
            | ModelKind::Fdisc
            | ModelKind::Student) => {
                anyhow::bail!("{kind:?} is fitted on backbone features, not trained as a network from scratch")
            }
        })
    }

    /// Replaces the networks by the weights of a bundle (fine-tuning); Adam starts afresh.
    pub(super) fn with_weights(self, path: &Path) -> anyhow::Result<Nets> {
        use crate::family::trained::BundleWeights;
        Ok(match self {
            Nets::Ae { model, opt } => {
                let w = BundleWeights { autoencoder: Some(model), gan: None }.load(path)?;
                Nets::Ae { model: w.autoencoder.expect("loaded into Some"), opt }
            }
            Nets::Gan { generator, critic, encoder, opt_g, opt_d, opt_e } => {
                let w = BundleWeights { autoencoder: None, gan: Some(GanModel { generator, critic, encoder }) }
                    .load(path)?;
                let g = w.gan.expect("loaded into Some");
                Nets::Gan { generator: g.generator, critic: g.critic, encoder: g.encoder, opt_g, opt_d, opt_e }
            }
        })
    }

    pub(super) fn save(&self, run: &RunDir) -> anyhow::Result<()> {
        std::fs::create_dir_all(run.0.join("checkpoint"))?;
        match self {
            Nets::Ae { model, opt } => {
                model.encoder.sync_running_stats();
                model.decoder.sync_running_stats();
                save_module(model, run, "model")?;
                save_opt(opt, run, "adam")
            }
            Nets::Gan { generator, critic, encoder, opt_g, opt_d, opt_e } => {
                generator.sync_running_stats();
                critic.sync_running_stats();
                encoder.sync_running_stats();
                save_module(generator, run, "generator")?;
                save_module(critic, run, "critic")?;
                save_module(encoder, run, "encoder")?;
                save_opt(opt_g, run, "adam_generator")?;
                save_opt(opt_d, run, "adam_critic")?;
                save_opt(opt_e, run, "adam_encoder")
            }
        }
    }
}

/// Loads the trained networks of a run (eval mode, no autodiff) for export.
pub fn load_trained(run: &RunDir, cfg: &TrainConfig, channels: usize) -> anyhow::Result<Trained> {
    let device = Device::flex();
    let spec = cfg.arch(channels);
    Ok(match cfg.model {
        ModelKind::Dae | ModelKind::Vae => {
            let m = load_module(Autoencoder::new(&spec, cfg.model == ModelKind::Vae, &device), run, "model", true)?;
            Trained::Autoencoder(m.valid())
        }
        ModelKind::Gan | ModelKind::Wgan => {
            let g = GanModel::new(&spec, cfg.model, &device);
            Trained::Gan(GanModel {
                generator: load_module(g.generator, run, "generator", true)?.valid(),
                critic: load_module(g.critic, run, "critic", true)?.valid(),
                encoder: load_module(g.encoder, run, "encoder", true)?.valid(),
            })
        }
        kind @ (ModelKind::Padim | ModelKind::Patchcore | ModelKind::Fae | ModelKind::Fdisc | ModelKind::Student) => {
            anyhow::bail!("{kind:?} has a fitted head, not trained networks; export it through the feature families")
        }
    })
}
