//! The reference architecture's strided 4×4 convolutions written as matrix products, a second
//! implementation beside burn's convolution operators, and a per-layer benchmark of both.
//!
//! burn computes a convolution's weight gradient as another convolution whose kernel is the
//! output gradient, which is where most of a training step goes on the CPU (and, as the
//! constant samples/s across batch sizes on a GPU suggests, there too). Written as
//! space-to-depth or phase slices and one matrix product, every gradient is a matrix product
//! as well. Which is faster depends on the backend, so `vigil-train bench-layers` measures
//! both, layer by layer, on the device at hand; training uses [`ConvImpl::Burn`] unless told.

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Instant;

use burn::nn::conv::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig};
use burn::nn::{BatchNormConfig, PaddingConfig2d};
use burn::tensor::ops::PadMode;
use burn::tensor::{Device, Distribution, Tensor};
use serde::{Deserialize, Serialize};

/// How the strided 4×4 convolutions (stride 2, padding 1) are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "snake_case")]
pub enum ConvImpl {
    /// burn's `conv2d` / `conv_transpose2d` operators.
    #[default]
    Burn,
    /// Channels-last slices and one matrix product per output phase.
    Matmul,
}

// A process-wide choice rather than a module field: it is how to run the arithmetic, not part
// of the model, so checkpoints and bundles stay the same whichever is used.
static CONV_IMPL: AtomicU8 = AtomicU8::new(0);

/// Selects the implementation every later forward pass uses.
pub fn set_conv_impl(choice: ConvImpl) {
    CONV_IMPL.store(choice as u8, Ordering::Relaxed);
}

/// The implementation in use.
pub fn conv_impl() -> ConvImpl {
    match CONV_IMPL.load(Ordering::Relaxed) {
        0 => ConvImpl::Burn,
        _ => ConvImpl::Matmul,
    }
}

fn down_fits(conv: &Conv2d, h: usize, w: usize) -> bool {
    conv.kernel_size == [4, 4]
        && conv.stride == [2, 2]
        && conv.dilation == [1, 1]
        && conv.groups == 1
        && matches!(conv.padding, PaddingConfig2d::Explicit(1, 1, 1, 1))
        && h.is_multiple_of(2)
        && w.is_multiple_of(2)
}

fn up_fits(conv: &ConvTranspose2d) -> bool {
    conv.kernel_size == [4, 4]
        && conv.stride == [2, 2]
        && conv.dilation == [1, 1]
        && conv.groups == 1
        && conv.padding == [1, 1]
        && conv.padding_out == [0, 0]
}

/// A 4×4, stride 2, padding 1 convolution through [`conv_impl`]; any other shape goes to burn.
pub fn conv_down(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    let [_, _, h, w] = x.dims();
    if conv_impl() == ConvImpl::Burn || !down_fits(conv, h, w) {
        return conv.forward(x);
    }
    conv_down_matmul(conv.weight.val(), conv.bias.as_ref().map(|b| b.val()), x)
}

/// A 4×4, stride 2, padding 1 transposed convolution through [`conv_impl`].
pub fn conv_up(conv: &ConvTranspose2d, x: Tensor<4>) -> Tensor<4> {
    if conv_impl() == ConvImpl::Burn || !up_fits(conv) {
        return conv.forward(x);
    }
    conv_up_matmul(conv.weight.val(), conv.bias.as_ref().map(|b| b.val()), x)
}

/// `y[o, i, j] = Σ w[o, c, kh, kw] · x[c, 2i + kh − 1, 2j + kw − 1]`. With `kh = 2a + p` and
/// `kw = 2b + q`, the padded input regrouped into 2×2 blocks (space to depth) holds `x` at
/// block `(i + a, j + b)`, channel `(p, q, c)`: four shifted views, side by side, times one
/// `[16·C, O]` matrix.
fn conv_down_matmul(weight: Tensor<4>, bias: Option<Tensor<1>>, x: Tensor<4>) -> Tensor<4> {
    let [n, c, h, w] = x.dims();
    let o = weight.dims()[0];
    let (ho, wo) = (h / 2, w / 2);
    let blocks = x
        .permute([0, 2, 3, 1])
        .pad([(1, 1), (1, 1), (0, 0)], PadMode::Constant(0.0))
        .reshape([n, ho + 1, 2, wo + 1, 2, c])
        .permute([0, 1, 3, 2, 4, 5])
        .reshape([n, ho + 1, wo + 1, 4 * c]);
    let views = [(0, 0), (0, 1), (1, 0), (1, 1)]
        .map(|(a, b)| blocks.clone().slice([0..n, a..a + ho, b..b + wo, 0..4 * c]))
        .to_vec();
    let columns = Tensor::cat(views, 3).reshape([n * ho * wo, 16 * c]);
    // [O, C, (a, p), (b, q)] -> rows ordered (a, b, p, q, c) as the columns are.
    let matrix = weight.reshape([o, c, 2, 2, 2, 2]).permute([2, 4, 3, 5, 1, 0]).reshape([16 * c, o]);
    let mut y = columns.matmul(matrix);
    if let Some(bias) = bias {
        y = y + bias.reshape([1, o]);
    }
    y.reshape([n, ho, wo, o]).permute([0, 3, 1, 2])
}

/// The taps of one output phase of a stride-2, padding-1, 4×4 transposed convolution: output
/// row `2m + p` takes kernel row `kh` from input row `m + d`, for these `(kh, d)`.
fn phase_taps(p: usize) -> [(usize, isize); 2] {
    if p == 0 { [(1, 0), (3, -1)] } else { [(2, 0), (0, 1)] }
}

/// Each of the four output phases `(p, q)` is a 2×2 convolution of the input: four shifted
/// views side by side times a `[4·C, O]` slice of the kernel; the phases are then interleaved.
fn conv_up_matmul(weight: Tensor<4>, bias: Option<Tensor<1>>, x: Tensor<4>) -> Tensor<4> {
    let [n, c, h, w] = x.dims();
    let o = weight.dims()[1];
    let padded = x.permute([0, 2, 3, 1]).pad([(1, 1), (1, 1), (0, 0)], PadMode::Constant(0.0));
    let view = |di: isize, dj: isize| {
        let (i, j) = ((1 + di) as usize, (1 + dj) as usize);
        padded.clone().slice([0..n, i..i + h, j..j + w, 0..c])
    };
    let mut rows = Vec::with_capacity(2);
    for p in 0..2 {
        let mut phases = Vec::with_capacity(2);
        for q in 0..2 {
            let (mut views, mut taps) = (vec![], vec![]);
            for (kh, di) in phase_taps(p) {
                for (kw, dj) in phase_taps(q) {
                    views.push(view(di, dj));
                    taps.push(weight.clone().slice([0..c, 0..o, kh..kh + 1, kw..kw + 1]).reshape([c, o]));
                }
            }
            let y = Tensor::cat(views, 3).reshape([n * h * w, 4 * c]).matmul(Tensor::cat(taps, 0));
            phases.push(y.reshape([n, h, w, o]));
        }
        rows.push(Tensor::stack::<5>(phases, 3)); // [n, h, w, q, o]
    }
    // [n, h, p, w, q, o] is [n, 2h, 2w, o] in memory order.
    let mut y = Tensor::stack::<6>(rows, 2).reshape([n, 2 * h, 2 * w, o]).permute([0, 3, 1, 2]);
    if let Some(bias) = bias {
        y = y + bias.reshape([1, o, 1, 1]);
    }
    y
}

/// One layer's timing, a JSON line of `bench-layers`.
#[derive(Debug, Clone, Serialize)]
pub struct LayerTiming {
    /// Where in the reference architecture: `encoder.c2`, `decoder.t3`, `decoder.bn2`...
    pub layer: String,
    /// `conv4x4s2`, `conv_t4x4s2` or `batch_norm`.
    pub op: &'static str,
    /// `burn` or `matmul`.
    pub implementation: &'static str,
    /// Input shape `[N, C, H, W]`.
    pub input: [usize; 4],
    /// Output channels.
    pub out_channels: usize,
    /// Milliseconds of the forward pass alone.
    pub forward_ms: f64,
    /// Milliseconds of the forward and backward passes (all gradients).
    pub forward_backward_ms: f64,
    /// Forward multiply-adds × 2 / forward time (0 for batch norm).
    pub forward_gflops: f64,
    /// Largest difference from burn's output (0 for burn itself).
    pub max_abs_diff: f32,
}

/// Times every strided convolution and batch norm of the reference architecture (3×128×128,
/// width 32) at batch `batch` on `device`, both implementations, `repeats` timed runs each
/// after three warm-up runs (autotuning happens in those).
pub fn bench_layers(device: &Device, batch: usize, repeats: usize) -> Vec<LayerTiming> {
    let width = 32;
    let mut out = vec![];
    let downs = [(3, width, 128), (width, 2 * width, 64), (2 * width, 4 * width, 32), (4 * width, 8 * width, 16)];
    for (i, &(cin, cout, side)) in downs.iter().enumerate() {
        let conv: Conv2d = Conv2dConfig::new([cin, cout], [4, 4])
            .with_stride([2, 2])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .init(device);
        let bias = || conv.bias.as_ref().map(|b| b.val());
        let case = Case {
            layer: format!("encoder.c{}", i + 1),
            op: "conv4x4s2",
            x: Tensor::random([batch, cin, side, side], Distribution::Normal(0.0, 1.0), device).require_grad(),
            out_channels: cout,
            macs: (batch * cout * (side / 2) * (side / 2) * cin * 16) as f64,
            repeats,
        };
        out.extend(case.time(&[
            (ConvImpl::Burn, &|x| conv.forward(x)),
            (ConvImpl::Matmul, &|x| conv_down_matmul(conv.weight.val(), bias(), x)),
        ]));
    }
    let ups = [(8 * width, 4 * width, 8), (4 * width, 2 * width, 16), (2 * width, width, 32), (width, 3, 64)];
    for (i, &(cin, cout, side)) in ups.iter().enumerate() {
        let conv: ConvTranspose2d =
            ConvTranspose2dConfig::new([cin, cout], [4, 4]).with_stride([2, 2]).with_padding([1, 1]).init(device);
        let bias = || conv.bias.as_ref().map(|b| b.val());
        let case = Case {
            layer: format!("decoder.t{}", i + 2),
            op: "conv_t4x4s2",
            x: Tensor::random([batch, cin, side, side], Distribution::Normal(0.0, 1.0), device).require_grad(),
            out_channels: cout,
            macs: (batch * cin * side * side * cout * 16) as f64,
            repeats,
        };
        out.extend(case.time(&[
            (ConvImpl::Burn, &|x| conv.forward(x)),
            (ConvImpl::Matmul, &|x| conv_up_matmul(conv.weight.val(), bias(), x)),
        ]));
    }
    for (name, c, side) in [("decoder.bn2", 4 * width, 16), ("decoder.bn3", 2 * width, 32), ("decoder.bn4", width, 64)]
    {
        let bn = BatchNormConfig::new(c).init(device);
        let case = Case {
            layer: name.into(),
            op: "batch_norm",
            x: Tensor::random([batch, c, side, side], Distribution::Normal(0.0, 1.0), device).require_grad(),
            out_channels: c,
            macs: 0.0,
            repeats,
        };
        out.extend(case.time(&[(ConvImpl::Burn, &|x| bn.forward(x))]));
    }
    out
}

/// One layer of the benchmark: its input (requiring a gradient) and what it computes.
struct Case {
    layer: String,
    op: &'static str,
    x: Tensor<4>,
    out_channels: usize,
    macs: f64,
    repeats: usize,
}

type Layer<'a> = &'a dyn Fn(Tensor<4>) -> Tensor<4>;

impl Case {
    /// Times each implementation; the first is the reference the others are compared with.
    fn time(&self, impls: &[(ConvImpl, Layer<'_>)]) -> Vec<LayerTiming> {
        let reference = (impls[0].1)(self.x.clone());
        impls.iter().map(|&(choice, run)| self.time_one(choice, run, &reference)).collect()
    }

    fn time_one(&self, choice: ConvImpl, run: Layer<'_>, reference: &Tensor<4>) -> LayerTiming {
        let x = &self.x;
        // Reading a scalar back waits for the device, so each timing covers finished work.
        let forward = || run(x.clone()).sum().into_scalar::<f32>();
        let forward_backward = || {
            let y = run(x.clone());
            let grads = (y.clone() * y).sum().backward();
            x.grad(&grads).map(|g| g.sum().into_scalar::<f32>()).unwrap_or(0.0)
        };
        let timed = |f: &dyn Fn() -> f32| {
            for _ in 0..3 {
                f();
            }
            let started = Instant::now();
            for _ in 0..self.repeats {
                f();
            }
            started.elapsed().as_secs_f64() * 1e3 / self.repeats as f64
        };
        let forward_ms = timed(&forward);
        let forward_backward_ms = timed(&forward_backward);
        let max_abs_diff = (run(x.clone()) - reference.clone()).abs().max().into_scalar::<f32>();
        LayerTiming {
            layer: self.layer.clone(),
            op: self.op,
            implementation: match choice {
                ConvImpl::Burn => "burn",
                ConvImpl::Matmul => "matmul",
            },
            input: x.dims(),
            out_channels: self.out_channels,
            forward_ms,
            forward_backward_ms,
            forward_gflops: 2.0 * self.macs / (forward_ms * 1e6),
            max_abs_diff,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: Tensor<4>, b: Tensor<4>) -> f32 {
        (a - b).abs().max().into_scalar::<f32>()
    }

    #[test]
    fn matrix_product_convolutions_match_burns_values_and_gradients() {
        let device = Device::flex().autodiff();
        device.seed(3);
        let down: Conv2d = Conv2dConfig::new([3, 5], [4, 4])
            .with_stride([2, 2])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .init(&device);
        let up: ConvTranspose2d =
            ConvTranspose2dConfig::new([5, 2], [4, 4]).with_stride([2, 2]).with_padding([1, 1]).init(&device);
        let x = Tensor::<4>::random([2, 3, 8, 6], Distribution::Normal(0.0, 1.0), &device).require_grad();
        let through = |imp: ConvImpl| {
            let weight_d = down.weight.val();
            let weight_u = up.weight.val();
            let bias_d = down.bias.as_ref().map(|b| b.val());
            let bias_u = up.bias.as_ref().map(|b| b.val());
            let mid = match imp {
                ConvImpl::Burn => down.forward(x.clone()),
                ConvImpl::Matmul => conv_down_matmul(weight_d, bias_d, x.clone()),
            };
            assert_eq!(mid.dims(), [2, 5, 4, 3]);
            let y = match imp {
                ConvImpl::Burn => up.forward(mid),
                ConvImpl::Matmul => conv_up_matmul(weight_u, bias_u, mid),
            };
            assert_eq!(y.dims(), [2, 2, 8, 6]);
            let grads = (y.clone() * y.clone()).sum().backward();
            (y, x.grad(&grads).unwrap(), down.weight.val().grad(&grads).unwrap(), up.weight.val().grad(&grads).unwrap())
        };
        let (y0, gx0, gd0, gu0) = through(ConvImpl::Burn);
        let (y1, gx1, gd1, gu1) = through(ConvImpl::Matmul);
        assert!(y0.clone().abs().max().into_scalar::<f32>() > 0.1, "a non-trivial output");
        assert!(close(y0, y1) < 1e-5);
        assert!(close(gx0.clone(), gx1) < 1e-4 * (1.0 + gx0.abs().max().into_scalar::<f32>()));
        assert!(close(gd0.clone(), gd1) < 1e-4 * (1.0 + gd0.abs().max().into_scalar::<f32>()));
        assert!(close(gu0.clone(), gu1) < 1e-4 * (1.0 + gu0.abs().max().into_scalar::<f32>()));
    }

    #[test]
    fn only_the_strided_4x4_layers_take_the_matrix_product_path() {
        let device = Device::flex();
        let strided = |k: usize, s: usize| {
            Conv2dConfig::new([2, 2], [k, k])
                .with_stride([s, s])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(&device)
        };
        assert!(down_fits(&strided(4, 2), 8, 8));
        assert!(!down_fits(&strided(4, 2), 7, 8), "odd sides");
        assert!(!down_fits(&strided(4, 1), 8, 8));
        assert!(!down_fits(&strided(3, 2), 8, 8));
        assert!(!down_fits(&Conv2dConfig::new([2, 2], [4, 4]).with_stride([2, 2]).init(&device), 8, 8), "no padding");
        let up = |k: usize, s: usize, p: usize| {
            ConvTranspose2dConfig::new([2, 2], [k, k]).with_stride([s, s]).with_padding([p, p]).init(&device)
        };
        assert!(up_fits(&up(4, 2, 1)));
        assert!(!up_fits(&up(8, 1, 0)), "the decoder's first layer");
        assert!(!up_fits(&up(4, 2, 0)));
    }
}
