//! The score head: the nodes that turn an image and the model's view of it into the
//! `anomaly_map` and `score` outputs, so every engine computes the same score as training.

use tract_onnx::pb;

use super::graph::Tensor as OnnxTensor;
use super::graph::{Dim, GraphBuilder, OPSET};
use super::net::{NetError, Sequential};
use crate::bundle::manifest::{InputSpec, PixelError, Reduction, SSIM_RADIUS, SSIM_SIGMA, ScoreSource, ScoreSpec};

/// The networks whose outputs a score head reads.
#[derive(Debug, Clone)]
pub enum ScoreNet {
    /// `decoder(encoder(x))` against `x` (DAE; VAE with the encoder cut to `mu`).
    Reconstruction {
        /// `C x H x W -> latent x 1 x 1`.
        encoder: Sequential,
        /// `latent x 1 x 1 -> C x H x W`.
        decoder: Sequential,
    },
    /// `-critic(x)`: how fake the discriminator finds `x`.
    Discriminator {
        /// `C x H x W -> 1 x 1 x 1` logit.
        critic: Sequential,
    },
    /// f-AnoGAN: `generator(encoder(x))` against `x`, plus the distance of the critic's
    /// features of both.
    EncoderFeatures {
        /// Encoder into the generator's latent space.
        encoder: Sequential,
        /// The frozen generator.
        generator: Sequential,
        /// The discriminator whose features are compared.
        critic: Sequential,
        /// How many leading critic layers produce the features.
        feature_layers: usize,
    },
}

/// Why a model could not be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExportError {
    /// A network's weights do not fit together.
    #[error("{network}: {source}")]
    Net {
        /// Which network.
        network: &'static str,
        /// The layer problem.
        source: NetError,
    },
    /// The networks do not fit the input or the score settings.
    #[error("{0}")]
    Mismatch(String),
}

/// The graph names vigil gives its outputs.
pub const SCORE_OUTPUT: &str = "score";
/// The graph name of the anomaly map output.
pub const MAP_OUTPUT: &str = "anomaly_map";
/// The graph name of a conditional model's class input (int64 `[N]`).
pub const CLASS_INPUT: &str = "class";

/// How a conditional network is told the class (as in a conditional GAN): the one-hot class
/// vector is concatenated to the latent code before a decoder or generator, and broadcast as
/// `k` extra input channels before an encoder or critic.
struct Condition {
    /// `[N, k, 1, 1]`.
    vector: String,
    /// `[N, k, H, W]`.
    planes: String,
    k: usize,
}

impl Condition {
    fn new(g: &mut GraphBuilder, k: usize, h: usize, w: usize) -> Condition {
        let classes = g.input_i64(CLASS_INPUT, &[Dim::Symbol("N".into())]);
        let one_hot = g.one_hot(&classes, k);
        let vector = g.reshape(&one_hot, &[-1, k as i64, 1, 1]);
        let ones = g.constant("class_plane", &OnnxTensor::new(vec![1, 1, h, w], vec![1.0; h * w]));
        let planes = g.mul(&vector, &ones);
        Condition { vector, planes, k }
    }

    /// An image (or reconstruction) with the class planes appended.
    fn image(c: Option<&Condition>, g: &mut GraphBuilder, x: &str) -> String {
        match c {
            Some(c) => g.concat(&[x, &c.planes], 1),
            None => x.to_owned(),
        }
    }

    /// A latent code with the class vector appended.
    fn latent(c: Option<&Condition>, g: &mut GraphBuilder, z: &str) -> String {
        match c {
            Some(c) => g.concat(&[z, &c.vector], 1),
            None => z.to_owned(),
        }
    }

    fn extra(c: Option<&Condition>) -> usize {
        c.map_or(0, |c| c.k)
    }
}

fn fold(net: &Sequential, name: &'static str, input: [usize; 3]) -> Result<(Sequential, [usize; 3]), ExportError> {
    let err = |source| ExportError::Net { network: name, source };
    let folded = net.fold_batch_norm().map_err(err)?;
    let out = folded.output_shape(input).map_err(err)?;
    Ok((folded, out))
}

fn expect_shape(name: &str, got: [usize; 3], want: [usize; 3]) -> Result<(), ExportError> {
    if got == want {
        Ok(())
    } else {
        Err(ExportError::Mismatch(format!("{name} produces {got:?} but the score head needs {want:?}")))
    }
}

/// Appends `1 - SSIM(x, recon)` per pixel and channel (`[N, C, H, W]`). The five local
/// statistics are Gaussian blurs of each channel, computed as one-channel maps.
fn ssim_dissimilarity(g: &mut GraphBuilder, x: &str, recon: &str, input: &InputSpec) -> String {
    let (c, h, w) = (input.channels as i64, input.height as i64, input.width as i64);
    let window = |g: &mut GraphBuilder, v: &str| {
        let planes = g.reshape(v, &[-1, 1, h, w]);
        let blurred = g.gaussian_blur(&planes, SSIM_SIGMA, SSIM_RADIUS);
        g.reshape(&blurred, &[-1, c, h, w])
    };
    let range = input.dynamic_range();
    let per_channel =
        |k: f32| OnnxTensor::new(vec![1, range.len(), 1, 1], range.iter().map(|l| (k * l).powi(2)).collect());
    let c1 = g.constant("ssim_c1", &per_channel(0.01));
    let c2 = g.constant("ssim_c2", &per_channel(0.03));
    let xx = g.mul(x, x);
    let rr = g.mul(recon, recon);
    let xr = g.mul(x, recon);
    let mu_x = window(g, x);
    let mu_r = window(g, recon);
    let e_xx = window(g, &xx);
    let e_rr = window(g, &rr);
    let e_xr = window(g, &xr);
    let mu_xx = g.mul(&mu_x, &mu_x);
    let mu_rr = g.mul(&mu_r, &mu_r);
    let mu_xr = g.mul(&mu_x, &mu_r);
    let var_x = g.sub(&e_xx, &mu_xx);
    let var_r = g.sub(&e_rr, &mu_rr);
    let cov = g.sub(&e_xr, &mu_xr);
    let two_mu = g.scale(&mu_xr, 2.0);
    let lum_num = g.add(&two_mu, &c1);
    let two_cov = g.scale(&cov, 2.0);
    let con_num = g.add(&two_cov, &c2);
    let mu_sum = g.add(&mu_xx, &mu_rr);
    let lum_den = g.add(&mu_sum, &c1);
    let var_sum = g.add(&var_x, &var_r);
    let con_den = g.add(&var_sum, &c2);
    let num = g.mul(&lum_num, &con_num);
    let den = g.mul(&lum_den, &con_den);
    let ssim = g.div(&num, &den);
    let one = g.constant("one", &OnnxTensor::scalar(1.0));
    g.sub(&one, &ssim)
}

/// Appends the reconstruction score head: per-pixel error, channel mean, smoothing, then the
/// reduction. `x` and `recon` are `[N, C, H, W]`; returns `(anomaly_map [N,1,H,W], score [N])`.
pub fn reconstruction_head(
    g: &mut GraphBuilder,
    x: &str,
    recon: &str,
    spec: &ScoreSpec,
    input: &InputSpec,
) -> (String, String) {
    let (height, width) = (input.height, input.width);
    let diff = g.sub(x, recon);
    let err = match spec.pixel_error {
        PixelError::Squared => g.mul(&diff, &diff),
        PixelError::Absolute => g.abs(&diff),
        PixelError::Ssim => ssim_dissimilarity(g, x, recon, input),
        PixelError::SsimSquared => {
            let squared = g.mul(&diff, &diff);
            let structural = ssim_dissimilarity(g, x, recon, input);
            g.add(&squared, &structural)
        }
    };
    let per_pixel = g.reduce_mean(&err, &[1], true);
    let map = g.gaussian_blur(&per_pixel, spec.smoothing_sigma, height.min(width) - 1);
    let score = reduce_map(g, &map, spec.reduction);
    (map, score)
}

/// Reduces an `[N, 1, H, W]` map to an `[N]` score.
pub fn reduce_map(g: &mut GraphBuilder, map: &str, reduction: Reduction) -> String {
    match reduction {
        Reduction::Max => g.reduce_max(map, &[1, 2, 3], false),
        Reduction::Mean => g.reduce_mean(map, &[1, 2, 3], false),
        Reduction::TopKMean { k } => {
            let flat = g.reshape(map, &[0, -1]);
            let top = g.top_k_values(&flat, k, 1);
            g.reduce_mean(&top, &[1], false)
        }
    }
}

/// Writes the complete scoring graph of a vigil-trained model: input `[N, C, H, W]` named
/// as the manifest says, outputs `score [N]` and, for reconstruction models, `anomaly_map`.
/// `classes` > 0 writes a conditional model of that many classes: a second input
/// [`CLASS_INPUT`] (int64 `[N]`) that every network reads (see `Condition`).
pub fn build_scoring_model(
    net: &ScoreNet,
    input: &InputSpec,
    spec: &ScoreSpec,
    classes: usize,
) -> Result<pb::ModelProto, ExportError> {
    let (c, h, w) = (input.channels, input.height, input.width);
    let image = [c, h, w];
    let mut g = GraphBuilder::new("vigil", OPSET);
    let n = Dim::Symbol("N".into());
    let x = g.input(&input.name, &[n.clone(), Dim::Fixed(c), Dim::Fixed(h), Dim::Fixed(w)]);
    let cond = (classes > 0).then(|| Condition::new(&mut g, classes, h, w));
    let cond = cond.as_ref();
    let k = Condition::extra(cond);
    // What the networks read: the image with the class planes, a latent with the class vector.
    let net_image = [c + k, h, w];
    let with_class = |z: [usize; 3]| [z[0] + k, z[1], z[2]];
    let map_dims = [n.clone(), Dim::Fixed(1), Dim::Fixed(h), Dim::Fixed(w)];

    let check_source = |want: ScoreSource| {
        if spec.source == want {
            Ok(())
        } else {
            Err(ExportError::Mismatch(format!(
                "score.source is {:?} but the networks given compute {want:?}",
                spec.source
            )))
        }
    };
    match net {
        ScoreNet::Reconstruction { encoder, decoder } => {
            check_source(ScoreSource::Reconstruction)?;
            let (enc, z) = fold(encoder, "encoder", net_image)?;
            let (dec, r) = fold(decoder, "decoder", with_class(z))?;
            expect_shape("decoder", r, image)?;
            let xc = Condition::image(cond, &mut g, &x);
            let latent = enc.emit(&mut g, &xc);
            let latent = Condition::latent(cond, &mut g, &latent);
            let recon = dec.emit(&mut g, &latent);
            let (map, score) = reconstruction_head(&mut g, &x, &recon, spec, input);
            g.output(&map, MAP_OUTPUT, &map_dims);
            g.output(&score, SCORE_OUTPUT, &[n]);
        }
        ScoreNet::Discriminator { critic } => {
            check_source(ScoreSource::Discriminator)?;
            let (d, o) = fold(critic, "critic", net_image)?;
            expect_shape("critic", o, [1, 1, 1])?;
            let xc = Condition::image(cond, &mut g, &x);
            let logit = d.emit(&mut g, &xc);
            let flat = g.reshape(&logit, &[-1]);
            let score = g.neg(&flat);
            g.output(&score, SCORE_OUTPUT, &[n]);
        }
        ScoreNet::EncoderFeatures { encoder, generator, critic, feature_layers } => {
            check_source(ScoreSource::EncoderFeatures)?;
            let (enc, z) = fold(encoder, "encoder", net_image)?;
            let (gen_net, r) = fold(generator, "generator", with_class(z))?;
            expect_shape("generator", r, image)?;
            fold(critic, "critic", net_image)?;
            // Folding removes batch-norm layers, so count the features by what they were
            // computed from: the first `feature_layers` layers of the unfolded critic.
            let unfolded_prefix = Sequential::new(critic.layers[..(*feature_layers).min(critic.layers.len())].to_vec());
            let prefix = fold(&unfolded_prefix, "critic features", net_image)?.0;
            let xc = Condition::image(cond, &mut g, &x);
            let latent = enc.emit(&mut g, &xc);
            let latent = Condition::latent(cond, &mut g, &latent);
            let recon = gen_net.emit(&mut g, &latent);
            let (map, residual) = reconstruction_head(&mut g, &x, &recon, spec, input);
            let rc = Condition::image(cond, &mut g, &recon);
            let fx = prefix.emit(&mut g, &xc);
            let fr = prefix.emit(&mut g, &rc);
            let fd = g.sub(&fx, &fr);
            let fsq = g.mul(&fd, &fd);
            let feat = g.reduce_mean(&fsq, &[1, 2, 3], false);
            let weighted = g.scale(&feat, spec.feature_weight.unwrap_or(1.0));
            let score = g.add(&residual, &weighted);
            g.output(&map, MAP_OUTPUT, &map_dims);
            g.output(&score, SCORE_OUTPUT, &[n]);
        }
    }
    Ok(g.finish())
}
