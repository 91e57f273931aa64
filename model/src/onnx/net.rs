//! Feed-forward networks as plain layer lists, with batch norm folding and ONNX emission.
//!
//! This is the hand-over format between training and export: `vigil-train` copies its burn
//! weights into a [`Sequential`], and the writer turns it into graph nodes. Keeping the
//! description independent of burn keeps burn out of the daemon's dependency tree.

use super::graph::{ConvParams, GraphBuilder, Tensor};

/// Inference-time batch normalisation statistics and affine parameters, per channel.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchNorm {
    /// Scale (γ).
    pub gamma: Tensor,
    /// Shift (β).
    pub beta: Tensor,
    /// Running mean.
    pub mean: Tensor,
    /// Running variance.
    pub var: Tensor,
    /// Added to the variance before the square root.
    pub eps: f32,
}

/// One layer of a [`Sequential`] network.
#[derive(Debug, Clone, PartialEq)]
pub enum Layer {
    /// 2-D convolution, weight `[out, in, kh, kw]`.
    Conv {
        /// Kernel.
        weight: Tensor,
        /// Per-output-channel bias.
        bias: Option<Tensor>,
        /// Stride and padding.
        params: ConvParams,
    },
    /// 2-D transposed convolution, weight `[in, out, kh, kw]`.
    ConvTranspose {
        /// Kernel.
        weight: Tensor,
        /// Per-output-channel bias.
        bias: Option<Tensor>,
        /// Stride and padding.
        params: ConvParams,
    },
    /// Batch normalisation over channels (folded into the previous convolution on export).
    BatchNorm(BatchNorm),
    /// Rectified linear unit.
    Relu,
    /// Leaky ReLU with this negative slope.
    LeakyRelu(f32),
    /// Logistic sigmoid.
    Sigmoid,
    /// Hyperbolic tangent.
    Tanh,
    /// Flatten everything after the batch axis.
    Flatten,
    /// Fully connected layer, weight `[out, in]`.
    Linear {
        /// Weight matrix.
        weight: Tensor,
        /// Bias.
        bias: Option<Tensor>,
    },
}

/// A network that applies its layers one after another.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Sequential {
    /// Layers in application order.
    pub layers: Vec<Layer>,
}

/// Why a network cannot be folded or emitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetError {
    /// A tensor has the wrong shape for its place in the network.
    #[error("layer {layer}: {problem}")]
    Shape {
        /// Index of the layer in the network.
        layer: usize,
        /// What does not fit.
        problem: String,
    },
}

fn fold_scale(bn: &BatchNorm) -> Vec<f32> {
    bn.gamma.data.iter().zip(&bn.var.data).map(|(g, v)| g / (v + bn.eps).sqrt()).collect()
}

impl Sequential {
    /// A network from its layers.
    pub fn new(layers: Vec<Layer>) -> Self {
        Sequential { layers }
    }

    /// The same function with every batch norm that follows a convolution folded into that
    /// convolution's weights and bias, so inference runs one op instead of two.
    pub fn fold_batch_norm(&self) -> Result<Sequential, NetError> {
        let mut out: Vec<Layer> = Vec::with_capacity(self.layers.len());
        for (i, layer) in self.layers.iter().enumerate() {
            let Layer::BatchNorm(bn) = layer else {
                out.push(layer.clone());
                continue;
            };
            let channels = bn.gamma.len();
            for (name, t) in [("beta", &bn.beta), ("mean", &bn.mean), ("var", &bn.var)] {
                if t.len() != channels {
                    return Err(NetError::Shape {
                        layer: i,
                        problem: format!("batch norm {name} has {} values, gamma {channels}", t.len()),
                    });
                }
            }
            let scale = fold_scale(bn);
            let folded = match out.last_mut() {
                Some(Layer::Conv { weight, bias, .. }) if weight.shape[0] == channels => {
                    let per = weight.len() / channels;
                    for (o, s) in scale.iter().enumerate() {
                        weight.data[o * per..(o + 1) * per].iter_mut().for_each(|w| *w *= s);
                    }
                    *bias = Some(folded_bias(bias.as_ref(), bn, &scale));
                    true
                }
                Some(Layer::ConvTranspose { weight, bias, .. }) if weight.shape[1] == channels => {
                    let (cin, k) = (weight.shape[0], weight.shape[2] * weight.shape[3]);
                    for i in 0..cin {
                        for (o, s) in scale.iter().enumerate() {
                            let start = (i * channels + o) * k;
                            weight.data[start..start + k].iter_mut().for_each(|w| *w *= s);
                        }
                    }
                    *bias = Some(folded_bias(bias.as_ref(), bn, &scale));
                    true
                }
                _ => false,
            };
            if !folded {
                // Nothing to fold into (first layer, or after an activation): keep the op.
                out.push(layer.clone());
            }
        }
        Ok(Sequential { layers: out })
    }

    /// Appends the network's nodes to `g`, reading `x`, and returns the output's name.
    pub fn emit(&self, g: &mut GraphBuilder, x: &str) -> String {
        self.emit_first(g, x, self.layers.len())
    }

    /// Appends the first `n` layers only (for intermediate features).
    pub fn emit_first(&self, g: &mut GraphBuilder, x: &str, n: usize) -> String {
        let mut v = x.to_string();
        for layer in &self.layers[..n.min(self.layers.len())] {
            v = match layer {
                Layer::Conv { weight, bias, params } => g.conv(&v, weight, bias.as_ref(), *params),
                Layer::ConvTranspose { weight, bias, params } => g.conv_transpose(&v, weight, bias.as_ref(), *params),
                Layer::BatchNorm(bn) => g.batch_norm(&v, &bn.gamma, &bn.beta, &bn.mean, &bn.var, bn.eps),
                Layer::Relu => g.relu(&v),
                Layer::LeakyRelu(a) => g.leaky_relu(&v, *a),
                Layer::Sigmoid => g.sigmoid(&v),
                Layer::Tanh => g.tanh(&v),
                Layer::Flatten => g.flatten(&v, 1),
                Layer::Linear { weight, bias } => g.gemm(&v, weight, bias.as_ref()),
            };
        }
        v
    }

    /// The output shape `[C, H, W]` (or `[features, 1, 1]` after a flatten) for an input of
    /// `[C, H, W]`, checking that every weight fits what reaches it.
    pub fn output_shape(&self, input: [usize; 3]) -> Result<[usize; 3], NetError> {
        let mut s = input;
        for (i, layer) in self.layers.iter().enumerate() {
            let shape_err = |problem: String| NetError::Shape { layer: i, problem };
            s = match layer {
                Layer::Conv { weight, params, .. } | Layer::ConvTranspose { weight, params, .. } => {
                    let transpose = matches!(layer, Layer::ConvTranspose { .. });
                    if weight.shape.len() != 4 {
                        return Err(shape_err(format!("kernel shape {:?} is not 4-D", weight.shape)));
                    }
                    let (cin, cout) =
                        if transpose { (weight.shape[0], weight.shape[1]) } else { (weight.shape[1], weight.shape[0]) };
                    if cin != s[0] {
                        return Err(shape_err(format!("expects {cin} input channels, gets {}", s[0])));
                    }
                    let (kh, kw, st, p) = (weight.shape[2], weight.shape[3], params.stride, params.pad);
                    let dim = |n: usize, k: usize| -> Result<usize, NetError> {
                        if transpose {
                            Ok(((n - 1) * st + k).saturating_sub(2 * p))
                        } else if n + 2 * p < k {
                            Err(NetError::Shape {
                                layer: i,
                                problem: format!("kernel {k} is larger than the padded input {}", n + 2 * p),
                            })
                        } else {
                            Ok((n + 2 * p - k) / st + 1)
                        }
                    };
                    [cout, dim(s[1], kh)?, dim(s[2], kw)?]
                }
                Layer::BatchNorm(bn) => {
                    if bn.gamma.len() != s[0] {
                        return Err(shape_err(format!("batch norm over {} channels, gets {}", bn.gamma.len(), s[0])));
                    }
                    s
                }
                Layer::Flatten => [s[0] * s[1] * s[2], 1, 1],
                Layer::Linear { weight, .. } => {
                    if weight.shape.len() != 2 || weight.shape[1] != s[0] * s[1] * s[2] {
                        return Err(shape_err(format!(
                            "linear weight {:?} does not fit {} features",
                            weight.shape,
                            s[0] * s[1] * s[2]
                        )));
                    }
                    [weight.shape[0], 1, 1]
                }
                Layer::Relu | Layer::LeakyRelu(_) | Layer::Sigmoid | Layer::Tanh => s,
            };
        }
        Ok(s)
    }

    /// Keeps only output channels `range` of the last convolution (the VAE's `mu` half of
    /// its `[mu, logvar]` encoder output, which is all that scoring needs).
    pub fn keep_last_conv_channels(&self, range: std::ops::Range<usize>) -> Result<Sequential, NetError> {
        let mut net = self.clone();
        let last = net.layers.len().saturating_sub(1);
        let Some(Layer::Conv { weight, bias, .. }) = net.layers.last_mut() else {
            return Err(NetError::Shape { layer: last, problem: "the last layer is not a convolution".into() });
        };
        if range.end > weight.shape[0] || range.is_empty() {
            return Err(NetError::Shape {
                layer: last,
                problem: format!("cannot keep channels {range:?} of {}", weight.shape[0]),
            });
        }
        let per = weight.len() / weight.shape[0];
        let mut shape = weight.shape.clone();
        shape[0] = range.len();
        *weight = Tensor::new(shape, weight.data[range.start * per..range.end * per].to_vec());
        if let Some(b) = bias {
            *b = Tensor::new(vec![range.len()], b.data[range].to_vec());
        }
        Ok(net)
    }
}

fn folded_bias(bias: Option<&Tensor>, bn: &BatchNorm, scale: &[f32]) -> Tensor {
    let data = scale
        .iter()
        .enumerate()
        .map(|(o, s)| {
            let b = bias.map_or(0.0, |b| b.data[o]);
            (b - bn.mean.data[o]) * s + bn.beta.data[o]
        })
        .collect();
    Tensor::new(vec![scale.len()], data)
}
