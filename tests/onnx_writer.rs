//! The ONNX writer: every op and every reference architecture with its score head passes
//! ONNX's full checker and matches ONNX's reference evaluator on tract and ONNX Runtime.

use ndarray::ArrayD;
use vigil_model::bundle::manifest::{ColorMode, Family, InputSpec, PixelError, Reduction, ScoreSource};
use vigil_model::onnx::graph::{ConvParams, Dim, GraphBuilder, OPSET, Tensor};
use vigil_model::onnx::head::{ScoreNet, build_scoring_model};
use vigil_model::onnx::net::Sequential;
use vigil_model::onnx::reference::{ArchSpec, WeightRng, decoder, encoder, scoring_net};
use vigil_model::onnx::wrap::wrap_reconstruction;

use crate::common::{Case, check_against_reference, default_score_spec, max_abs_diff, random, run_tract};

/// Every op and composite vigil writes must agree with the reference to this.
const TOL: f32 = 1e-5;

fn fixed(shape: &[usize]) -> Vec<Dim> {
    shape.iter().map(|&d| Dim::Fixed(d)).collect()
}

fn free(rank: usize) -> Vec<Dim> {
    (0..rank).map(|i| Dim::Symbol(format!("d{i}"))).collect()
}

/// A graph of one op (or a small fixed composite) reading `x`.
fn single(
    name: &str,
    shape: &[usize],
    out_rank: usize,
    seed: u64,
    build: impl FnOnce(&mut GraphBuilder, &str) -> String,
) -> Case {
    let mut g = GraphBuilder::new(name, OPSET);
    let x = g.input("x", &fixed(shape));
    let y = build(&mut g, &x);
    g.output(&y, "y", &free(out_rank));
    Case { name: name.into(), model: g.finish(), inputs: vec![("x", random(shape, -1.0, 1.0, seed))] }
}

fn t(rng: &mut WeightRng, shape: &[usize]) -> Tensor {
    rng.tensor(shape.to_vec(), -0.5, 0.5)
}

#[test]
fn every_op_passes_the_checker_and_matches_the_reference_on_both_engines() {
    let mut r = WeightRng::new(11);
    let s4 = [2, 3, 8, 8];
    let cases = vec![
        single("conv", &s4, 4, 1, |g, x| {
            let (w, b) = (t(&mut r, &[4, 3, 4, 4]), t(&mut r, &[4]));
            g.conv(x, &w, Some(&b), ConvParams { stride: 2, pad: 1 })
        }),
        single("conv_transpose", &s4, 4, 2, |g, x| {
            let (w, b) = (t(&mut r, &[3, 5, 4, 4]), t(&mut r, &[5]));
            g.conv_transpose(x, &w, Some(&b), ConvParams { stride: 2, pad: 1 })
        }),
        single("batch_norm", &s4, 4, 3, |g, x| {
            let (ga, be, me) = (t(&mut r, &[3]), t(&mut r, &[3]), t(&mut r, &[3]));
            let var = r.tensor(vec![3], 0.5, 1.5);
            g.batch_norm(x, &ga, &be, &me, &var, 1e-5)
        }),
        single("relu", &s4, 4, 4, |g, x| g.relu(x)),
        single("leaky_relu", &s4, 4, 5, |g, x| g.leaky_relu(x, 0.2)),
        single("sigmoid", &s4, 4, 6, |g, x| g.sigmoid(x)),
        single("tanh", &s4, 4, 7, |g, x| g.tanh(x)),
        single("neg_abs", &s4, 4, 8, |g, x| {
            let n = g.neg(x);
            g.abs(&n)
        }),
        single("flatten_gemm", &s4, 2, 9, |g, x| {
            let f = g.flatten(x, 1);
            let (w, b) = (t(&mut r, &[5, 192]), t(&mut r, &[5]));
            g.gemm(&f, &w, Some(&b))
        }),
        single("reshape_matmul", &s4, 2, 10, |g, x| {
            let f = g.reshape(x, &[0, -1]);
            let w = g.constant("w", &t(&mut r, &[192, 7]));
            g.matmul(&f, &w)
        }),
        single("add_sub_mul_broadcast", &s4, 4, 11, |g, x| {
            let (a, s, m) = (t(&mut r, &[1, 3, 1, 1]), t(&mut r, &[1, 3, 1, 1]), t(&mut r, &[1, 1, 8, 8]));
            let (a, s, m) = (g.constant("a", &a), g.constant("s", &s), g.constant("m", &m));
            let y = g.add(x, &a);
            let y = g.sub(&y, &s);
            g.mul(&y, &m)
        }),
        single("pow", &s4, 4, 12, |g, x| g.pow(x, 2.0)),
        single("reduce_mean_channels", &s4, 4, 13, |g, x| g.reduce_mean(x, &[1], true)),
        single("reduce_max_all", &s4, 1, 14, |g, x| g.reduce_max(x, &[1, 2, 3], false)),
        single("pad_reflect", &[2, 1, 8, 8], 4, 15, |g, x| {
            g.pad_spatial(x, 2, 2, 3, 3, vigil_model::onnx::graph::PadMode::Reflect)
        }),
        single("gaussian_blur", &[2, 1, 16, 16], 4, 16, |g, x| g.gaussian_blur(x, 1.5, 15)),
        single("top_k_mean", &[2, 1, 8, 8], 1, 17, |g, x| {
            vigil_model::onnx::head::reduce_map(g, x, Reduction::TopKMean { k: 10 })
        }),
        single("mean_map", &[2, 1, 8, 8], 1, 18, |g, x| vigil_model::onnx::head::reduce_map(g, x, Reduction::Mean)),
    ];
    let worst = check_against_reference(&cases, TOL);
    assert_eq!(worst.len(), cases.len());
    eprintln!("worst difference per op: {worst:?}");
}

fn scoring_case(
    name: &str,
    net: ScoreNet,
    color: ColorMode,
    size: usize,
    source: ScoreSource,
    tweak: impl FnOnce(&mut vigil_model::bundle::manifest::ScoreSpec),
) -> Case {
    let input = InputSpec::unit_range("image", color, size, size);
    let mut spec = default_score_spec(source);
    tweak(&mut spec);
    let model = build_scoring_model(&net, &input, &spec, 0).unwrap();
    Case { name: name.into(), model, inputs: vec![("image", random(&[2, color.channels(), size, size], 0.0, 1.0, 99))] }
}

#[test]
fn reference_architectures_with_score_heads_match_the_reference() {
    let rgb = ArchSpec::default();
    let gray = ArchSpec { channels: 1, ..rgb };
    let cases = vec![
        scoring_case(
            "dae_rgb_128_max",
            scoring_net(Family::Dae, &rgb, false, 1).unwrap(),
            ColorMode::Rgb,
            128,
            ScoreSource::Reconstruction,
            |_| {},
        ),
        scoring_case(
            "vae_gray_128_topk",
            scoring_net(Family::Vae, &gray, false, 2).unwrap(),
            ColorMode::Gray,
            128,
            ScoreSource::Reconstruction,
            |s| {
                s.reduction = Reduction::TopKMean { k: 100 };
                s.pixel_error = PixelError::Absolute;
            },
        ),
        scoring_case(
            "gan_discriminator",
            scoring_net(Family::Gan, &rgb, false, 3).unwrap(),
            ColorMode::Rgb,
            128,
            ScoreSource::Discriminator,
            |_| {},
        ),
        scoring_case(
            "wgan_critic",
            scoring_net(Family::Wgan, &gray, false, 4).unwrap(),
            ColorMode::Gray,
            128,
            ScoreSource::Discriminator,
            |_| {},
        ),
        scoring_case(
            "gan_encoder_features",
            scoring_net(Family::Gan, &rgb, true, 5).unwrap(),
            ColorMode::Rgb,
            128,
            ScoreSource::EncoderFeatures,
            |s| {
                s.reduction = Reduction::Mean;
            },
        ),
        scoring_case(
            "dae_gray_128_ssim_squared",
            scoring_net(Family::Dae, &gray, false, 6).unwrap(),
            ColorMode::Gray,
            128,
            ScoreSource::Reconstruction,
            |s| s.pixel_error = PixelError::SsimSquared,
        ),
        scoring_case(
            "vae_rgb_128_ssim",
            scoring_net(Family::Vae, &rgb, false, 7).unwrap(),
            ColorMode::Rgb,
            128,
            ScoreSource::Reconstruction,
            |s| s.pixel_error = PixelError::Ssim,
        ),
    ];
    let worst = check_against_reference(&cases, TOL);
    eprintln!("worst difference per architecture: {worst:?}");
}

#[test]
fn batch_norm_folding_keeps_the_function() {
    let spec = ArchSpec { size: 32, ..ArchSpec::default() };
    let mut rng = WeightRng::new(5);
    for (name, net, shape) in [
        ("encoder", encoder(&spec, 16, true, &mut rng), [2, 3, 32, 32]),
        ("decoder", decoder(&spec, &mut rng), [2, 128, 1, 1]),
    ] {
        let run = |n: &Sequential| -> ArrayD<f32> {
            let mut g = GraphBuilder::new(name, OPSET);
            let x = g.input("x", &fixed(&shape));
            let y = n.emit(&mut g, &x);
            g.output(&y, "y", &free(4));
            run_tract(&g.finish(), &[("x", random(&shape, 0.0, 1.0, 3))]).remove(0).1
        };
        let folded = net.fold_batch_norm().unwrap();
        let bn_layers = |n: &Sequential| {
            n.layers.iter().filter(|l| matches!(l, vigil_model::onnx::net::Layer::BatchNorm(_))).count()
        };
        assert!(bn_layers(&net) > 0, "{name}: the test needs batch norms to fold");
        assert_eq!(bn_layers(&folded), 0, "{name}: every batch norm follows a convolution and folds");
        let d = max_abs_diff(&run(&net), &run(&folded));
        assert!(d <= TOL, "{name}: folding changed the output by {d}");
    }
}

/// An autoencoder as another tool would export it: its own names, a given opset, batch
/// norm folded (as PyTorch's exporter does in eval mode; ONNX's reference evaluator also
/// runs opset 9–13 BatchNormalization in training mode, so unfolded ones cannot be compared).
fn foreign_autoencoder(opset: i64) -> vigil_model::onnx::pb::ModelProto {
    let spec = ArchSpec { size: 32, channels: 1, ..ArchSpec::default() };
    let mut rng = WeightRng::new(8);
    let e = encoder(&spec, 16, true, &mut rng).fold_batch_norm().unwrap();
    let d = decoder(&ArchSpec { latent: 16, ..spec }, &mut rng).fold_batch_norm().unwrap();
    let mut g = GraphBuilder::new("torch_jit", opset);
    let x = g.input("input.1", &[Dim::Symbol("batch".into()), Dim::Fixed(1), Dim::Fixed(32), Dim::Fixed(32)]);
    let z = e.emit(&mut g, &x);
    let r = d.emit(&mut g, &z);
    g.output(&r, "recon", &[Dim::Symbol("batch".into()), Dim::Fixed(1), Dim::Fixed(32), Dim::Fixed(32)]);
    g.finish()
}

#[test]
fn a_foreign_autoencoder_gets_the_score_head_at_old_and_new_opsets() {
    let spec = default_score_spec(ScoreSource::Reconstruction);
    let cases: Vec<Case> = [13, 18]
        .into_iter()
        .map(|opset| Case {
            name: format!("wrapped_opset_{opset}"),
            model: wrap_reconstruction(
                foreign_autoencoder(opset),
                "recon",
                &spec,
                &InputSpec::unit_range("input.1", ColorMode::Gray, 32, 32),
            )
            .unwrap(),
            inputs: vec![("input.1", random(&[2, 1, 32, 32], 0.0, 1.0, 4))],
        })
        .collect();
    for c in &cases {
        assert_eq!(crate::common::output_names(&c.model), ["anomaly_map", "score"]);
    }
    check_against_reference(&cases, TOL);
}

#[test]
fn wrapping_refuses_unknown_outputs_and_unsupported_opsets() {
    let spec = default_score_spec(ScoreSource::Reconstruction);
    let err = wrap_reconstruction(
        foreign_autoencoder(13),
        "output",
        &spec,
        &InputSpec::unit_range("input.1", ColorMode::Gray, 32, 32),
    )
    .unwrap_err();
    assert!(err.to_string().contains("no output `output`") && err.to_string().contains("recon"), "{err}");
    let err = wrap_reconstruction(
        foreign_autoencoder(9),
        "recon",
        &spec,
        &InputSpec::unit_range("input.1", ColorMode::Gray, 32, 32),
    )
    .unwrap_err();
    assert!(err.to_string().contains("opset Some(9)"), "{err}");
}
