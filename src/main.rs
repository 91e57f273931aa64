//! The `vigil` binary: parses the command line, calls the library, prints errors once.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use vigil::commands::{inspect, score, wrap};
use vigil_model::bundle::Bundle;
use vigil_model::bundle::manifest::Reduction;
use vigil_model::engine::{EngineChoice, EngineConfig, Precision};

#[derive(Parser)]
#[command(name = "vigil", version, about = "Edge anomaly detection for factory cameras")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct EngineArgs {
    /// Inference engine: auto takes OpenVINO where the CPU computes in bfloat16, else ONNX
    /// Runtime, else tract.
    #[arg(long, value_enum, default_value_t = EngineChoice::Auto)]
    engine: EngineChoice,
    /// `auto`: bfloat16 through OpenVINO where the CPU has it; `f32`: float32 everywhere.
    #[arg(long, value_enum, default_value_t = Precision::Auto)]
    precision: Precision,
    /// OpenVINO's C library (default: VIGIL_OPENVINO_LIBRARY, then the usual system places).
    #[arg(long)]
    openvino_library: Option<PathBuf>,
    /// Threads per inference (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// The ONNX Runtime library (default: ORT_DYLIB_PATH, then the usual system places).
    #[arg(long)]
    ort_library: Option<PathBuf>,
}

impl EngineArgs {
    fn config(&self) -> EngineConfig {
        EngineConfig {
            kind: self.engine,
            precision: self.precision,
            threads: self.threads,
            ort_library: self.ort_library.clone(),
            openvino_library: self.openvino_library.clone(),
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: watch the configured cameras, score frames, publish alerts.
    Run {
        /// The config file (TOML); keys can be overridden with VIGIL__SECTION__KEY variables.
        #[arg(long, short, env = "VIGIL_CONFIG", default_value = "/etc/vigil/vigil.toml")]
        config: PathBuf,
    },
    /// See vigil work: a simulated camera writes synthetic frames, the daemon scores them with
    /// the built-in model, and a line per frame and a summary are printed. No config, no broker.
    Demo {
        /// Where frames, alerts and overlays go (default: a new folder under the temp dir).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Frames the simulated camera writes (every fourth has a defect).
        #[arg(long, default_value_t = 24)]
        frames: usize,
        /// Time between frames.
        #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
        interval: std::time::Duration,
        /// Also publish to this MQTT broker, e.g. mqtt://localhost:1883.
        #[arg(long)]
        mqtt: Option<String>,
        /// Keep watching the folder after the simulated frames (drop your own in; Ctrl-C ends).
        /// Serves the page too.
        #[arg(long)]
        follow: bool,
        /// Serve the operator's page on 127.0.0.1 (port 9187, or a free one) and keep running
        /// until Ctrl-C, as with --follow.
        #[arg(long)]
        page: bool,
        /// A bundle to use instead of the built-in one.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Seed of the synthetic frames.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Time the daemon's per-frame path on a folder of frames, then the engine alone; JSON lines.
    Bench {
        /// Bundle folder, or a .onnx file with an embedded manifest.
        #[arg(long)]
        model: PathBuf,
        /// Folder of frames (PNG, JPEG, BMP, TIFF).
        #[arg(long)]
        frames: PathBuf,
        /// The frames' product, for a conditional bundle.
        #[arg(long)]
        class: Option<String>,
        /// Passes over the folder.
        #[arg(long, default_value_t = 1)]
        repeat: usize,
        /// Threads decoding frames beside the engine (the daemon's `scoring.decode_workers`).
        #[arg(long)]
        decode_workers: Option<usize>,
        /// Most frames per engine call when frames queue up (`scoring.max_batch`).
        #[arg(long)]
        max_batch: Option<usize>,
        /// Then where tract's plan spends a frame: one line per operator (`"mode":"profile"`),
        /// the slowest first.
        #[arg(long)]
        profile: bool,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Check a config without starting: every problem with its key; exit 1 on any.
    Validate {
        /// The config file (TOML).
        #[arg(long, short, env = "VIGIL_CONFIG", default_value = "/etc/vigil/vigil.toml")]
        config: PathBuf,
    },
    /// Print the configuration reference (Markdown) generated from the config's documentation.
    ConfigReference,
    /// Roll a bundle out to boxes over MQTT: signed, in chunks, on
    /// `<prefix>/<device>/<camera>/bundle/set`; prints each box's answer as a JSON line, exit 1
    /// unless every box installed it.
    Publish {
        /// The bundle folder or .onnx file.
        bundle: PathBuf,
        /// The broker: mqtt://host[:port] (plain MQTT). For TLS and credentials give --config.
        #[arg(long, required_unless_present = "config")]
        mqtt: Option<String>,
        /// A vigil.toml whose [mqtt] section (host, TLS, credentials, topic_prefix) is used.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Device ids to roll out to: a glob over the boxes' `device_id` (`line1-*`).
        #[arg(long)]
        devices: String,
        /// The camera id on each box.
        #[arg(long)]
        camera: String,
        /// The signing key (`vigil keygen`).
        #[arg(long)]
        key: PathBuf,
        /// The boxes' `mqtt.topic_prefix` (default: the config's, else `vigil`).
        #[arg(long)]
        prefix: Option<String>,
        /// How long to wait for the boxes' answers.
        #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
        wait: std::time::Duration,
        /// Go back on purpose: sign the rollout as a rollback, so that boxes take a bundle
        /// version older than the one rolled out last (they refuse it as a downgrade otherwise).
        #[arg(long)]
        rollback: bool,
    },
    /// Make a signing key for `vigil publish`: writes FILE (secret, mode 0600) and FILE.pub, and
    /// prints the public key for the boxes' `[fleet] trusted_keys`.
    Keygen {
        /// Where to write the key (it must not exist).
        #[arg(long)]
        out: PathBuf,
    },
    /// Put the bundle a camera served before the last `vigil-train retrain --install` back in
    /// service (swapped with `<bundle>.previous`; run it again to go forward).
    Rollback {
        /// The camera's id (`[[cameras]] id`).
        #[arg(long)]
        camera: String,
        /// The config file (TOML).
        #[arg(long, short, env = "VIGIL_CONFIG", default_value = "/etc/vigil/vigil.toml")]
        config: PathBuf,
    },
    /// Retrain one camera's bundle on the data set the daemon collected, gated: runs
    /// `vigil-train retrain --from <its bundle> --dataset <its data set> --gate --install`
    /// with the paths from the config (what `vigil-retrain@<camera>.service` runs). Exit 3:
    /// the gate kept the served bundle.
    Retrain {
        /// The camera's id (`[[cameras]] id`).
        #[arg(long)]
        camera: String,
        /// The config file (TOML).
        #[arg(long, short, env = "VIGIL_CONFIG", default_value = "/etc/vigil/vigil.toml")]
        config: PathBuf,
        /// More `vigil-train retrain` flags (after `--`), e.g. `-- --epochs 5`.
        #[arg(last = true)]
        extra: Vec<String>,
    },
    /// Score image files; prints one JSON line per image.
    Score {
        /// Bundle folder, or a .onnx file with an embedded manifest.
        #[arg(long)]
        model: PathBuf,
        /// The images' product, for a conditional bundle (`vigil inspect` lists its classes).
        #[arg(long)]
        class: Option<String>,
        #[command(flatten)]
        engine: EngineArgs,
        /// Image files (PNG, JPEG, BMP, TIFF).
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
    /// Print a bundle's manifest and its model's inputs and outputs as JSON.
    Inspect {
        /// Bundle folder, or a .onnx file with an embedded manifest.
        bundle: PathBuf,
    },
    /// Make a bundle from an ONNX model exported elsewhere.
    Wrap {
        /// The foreign .onnx file.
        model: PathBuf,
        /// Bundle folder to write.
        #[arg(long)]
        out: PathBuf,
        /// The output holding a reconstruction of the input: vigil appends its score head.
        #[arg(long, conflicts_with = "score", required_unless_present = "score")]
        reconstruction: Option<String>,
        /// The output holding a score the model computes itself (family `external`).
        #[arg(long)]
        score: Option<String>,
        /// The output holding the model's own anomaly map (with --score).
        #[arg(long, requires = "score")]
        map: Option<String>,
        /// Decision threshold on the score.
        #[arg(long)]
        threshold: f32,
        /// Bundle name (default: the file's stem).
        #[arg(long)]
        name: Option<String>,
        /// Pixel scale applied before mean/std.
        #[arg(long, default_value_t = 1.0 / 255.0)]
        scale: f32,
        /// Mean per channel (or one value for all), subtracted after scaling.
        #[arg(long, value_delimiter = ',', default_value = "0")]
        mean: Vec<f32>,
        /// Std per channel (or one value for all), dividing after the mean.
        #[arg(long, value_delimiter = ',', default_value = "1")]
        std: Vec<f32>,
        /// Gaussian smoothing of the anomaly map, in pixels (0 = none).
        #[arg(long, default_value_t = 4.0)]
        smoothing_sigma: f32,
        /// Map to score: max, mean, or top-k mean as `top-k:K`.
        #[arg(long, default_value = "max", value_parser = parse_reduction)]
        reduction: Reduction,
    },
}

fn parse_reduction(s: &str) -> Result<Reduction, String> {
    match s {
        "max" => Ok(Reduction::Max),
        "mean" => Ok(Reduction::Mean),
        _ => s
            .strip_prefix("top-k:")
            .and_then(|k| k.parse().ok())
            .map(|k| Reduction::TopKMean { k })
            .ok_or_else(|| format!("`{s}`: expected max, mean or top-k:K (K pixels)")),
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run { config } => {
            let cfg = vigil::config::load(&config)?;
            init_logging(Some(&cfg.log));
            // `run` validates the config and loads (and test-runs) every bundle before starting.
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("vigil-io")
                .enable_all()
                .build()?;
            let stop = {
                let _in_runtime = rt.enter();
                stop_signal()
            };
            rt.block_on(vigil::daemon::run(cfg, stop))?;
        }
        Command::Demo { out, frames, interval, mqtt, follow, page, model, seed, engine } => {
            let out = out.unwrap_or_else(|| {
                let stamp =
                    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
                std::env::temp_dir().join(format!("vigil-demo-{stamp}"))
            });
            let opts = vigil::commands::demo::DemoOptions {
                out,
                frames,
                interval,
                mqtt,
                follow,
                page,
                engine: engine.config(),
                model,
                seed,
            };
            let summary = vigil::commands::demo::run(&opts)?;
            if summary.frames == 0 {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Bench { model, frames, class, repeat, decode_workers, max_batch, profile, engine } => {
            let config = engine.config();
            let defaults = vigil::scoring::ScoringConfig::default();
            let scoring = vigil::scoring::ScoringConfig {
                decode_workers: decode_workers.unwrap_or(defaults.decode_workers).max(1),
                max_batch: max_batch.unwrap_or(defaults.max_batch).max(1),
                ..defaults
            };
            let (bundle, loaded) = score::prepare(&model, &config)?;
            let files = vigil::commands::bench::frame_files(&frames)?;
            let threads = config.effective_threads();
            let macs = vigil_model::engine::tract::multiply_adds(&bundle)?;
            let pre = vigil_model::preprocess::Preprocessor::new(&bundle.manifest.input);
            let model = std::sync::Arc::new(vigil::scoring::Model { bundle, engine: loaded, pre });
            let class = class.as_deref();
            let daemon =
                vigil::commands::bench::daemon(model.clone(), &scoring, &files, class, repeat.max(1), threads)?;
            println!("{}", serde_json::to_string(&daemon)?);
            let serial =
                vigil::commands::bench::per_frame(&model.bundle, &model.engine, &files, class, repeat.max(1), threads)?;
            println!("{}", serde_json::to_string(&serial)?);
            for batch in [1, 8.min(model.engine.max_batch())] {
                let calls = (200 / batch).max(10);
                let r = vigil::commands::bench::engine_only(&model.engine, batch, calls, macs)?;
                println!("{}", serde_json::to_string(&r)?);
            }
            if profile {
                for line in vigil::commands::bench::tract_profile(&model.bundle, &config, 20)? {
                    println!("{}", serde_json::to_string(&line)?);
                }
            }
        }
        Command::Validate { config } => {
            init_logging(None);
            let (cfg, mut problems) = vigil::config::load_lenient(&config);
            // What parsed is checked too, so one run lists every problem.
            if let Some(cfg) = &cfg {
                problems.extend(vigil::reload::check(cfg));
            }
            match cfg {
                Some(cfg) if problems.is_empty() => {
                    println!("{}: ok ({} camera(s))", config.display(), cfg.cameras.len())
                }
                _ => return Err(vigil::problem::ConfigError { path: config, problems }.into()),
            }
        }
        Command::ConfigReference => print!("{}", vigil::commands::config_reference::markdown()),
        Command::Keygen { out } => println!("{}", vigil::commands::publish::keygen(&out)?),
        Command::Publish { bundle, mqtt, config, devices, camera, key, prefix, wait, rollback } => {
            init_logging(None);
            let from_config = config.map(|c| vigil::config::load(&c)).transpose()?.and_then(|c| c.mqtt);
            let broker = match (&mqtt, &from_config) {
                (Some(url), _) => vigil::commands::publish::broker(url)?,
                (None, Some(m)) => m.clone(),
                (None, None) => anyhow::bail!("the config has no [mqtt] section; give --mqtt mqtt://host:port"),
            };
            let prefix = prefix.or(from_config.map(|m| m.topic_prefix)).unwrap_or_else(|| "vigil".into());
            let publish = vigil::commands::publish::Publish {
                bundle,
                mqtt: broker,
                prefix,
                devices,
                camera,
                key,
                discover: std::time::Duration::from_secs(2),
                wait,
                rollback,
            };
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let outcomes = rt.block_on(vigil::commands::publish::run(&publish))?;
            for o in &outcomes {
                println!("{}", serde_json::to_string(o)?);
            }
            if outcomes.iter().any(|o| !o.ok) {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Rollback { camera, config } => {
            let cfg = vigil::config::load(&config)?;
            print!("{}", vigil::commands::rollback::run(&cfg, &camera)?.report());
        }
        Command::Retrain { camera, config, extra } => {
            let cfg = vigil::config::load(&config)?;
            let code = vigil::commands::retrain::run(&cfg, &camera, &extra)?;
            return Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)));
        }
        Command::Score { model, class, engine, images } => {
            let (bundle, engine) = score::prepare(&model, &engine.config())?;
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            let failures = score::run(&bundle, &engine, class.as_deref(), &images, &mut out)?;
            out.flush()?;
            if failures > 0 {
                eprintln!("vigil score: {failures} of {} image(s) could not be scored", images.len());
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Inspect { bundle } => {
            let bundle = Bundle::load(&bundle)?;
            println!("{}", serde_json::to_string_pretty(&inspect::inspect(&bundle)?)?);
        }
        Command::Wrap {
            model,
            out,
            reconstruction,
            score,
            map,
            threshold,
            name,
            scale,
            mean,
            std,
            smoothing_sigma,
            reduction,
        } => {
            let outputs = match (reconstruction, score) {
                (Some(r), _) => wrap::ForeignOutputs::Reconstruction(r),
                (None, Some(score)) => wrap::ForeignOutputs::Score { score, map },
                (None, None) => unreachable!("clap requires one of --reconstruction and --score"),
            };
            let bundle = wrap::wrap(&wrap::WrapRequest {
                model,
                out,
                name,
                outputs,
                threshold,
                scale,
                mean,
                std,
                smoothing_sigma,
                reduction,
            })?;
            eprintln!("wrote bundle {}", bundle.path.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Completes on the first SIGTERM or SIGINT. The handlers are installed by this call, inside
/// the runtime, not when the future is first polled: the daemon polls it only once it is
/// running, and a SIGTERM before that (while bundles load, or between READY and the first
/// poll) would otherwise meet the default action and kill the process without a clean stop.
fn stop_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()));
    async move {
        let (mut term, mut int) = match handlers {
            (Ok(t), Ok(i)) => (t, i),
            _ => return std::future::pending().await,
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    }
}

/// Logs to stderr (the journal under systemd): `VIGIL_LOG` wins over the config's level.
fn init_logging(log: Option<&vigil::config::LogConfig>) {
    let level = log.map_or("info", |l| l.level.as_str());
    let filter = tracing_subscriber::EnvFilter::try_from_env("VIGIL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{level},ort=warn")));
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter(filter);
    let _ = match log.map(|l| l.format) {
        Some(vigil::config::LogFormat::Json) => builder.json().try_init(),
        _ => builder.try_init(),
    };
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Command::Run { .. } | Command::Validate { .. } => {}
        // The demo prints its own lines; the log shows only what needs attention.
        Command::Demo { .. } => {
            init_logging(Some(&vigil::config::LogConfig { level: "warn".into(), ..Default::default() }))
        }
        _ => init_logging(None),
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vigil: {e:#}");
            ExitCode::FAILURE
        }
    }
}
