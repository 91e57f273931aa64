//! The class condition of a conditional model, shared by every family's networks and by the
//! training steps and the parity scoring that feed them.

use burn::tensor::{Device, Tensor, TensorData};

/// The class of each image of a conditional model's batch, as its networks read it (the
/// exported graph's `Condition`): one-hot vectors appended to latent codes, and the same
/// broadcast as extra planes of images.
#[derive(Clone)]
pub struct Cond {
    one_hot: Tensor<2>,
}

impl Cond {
    /// The one-hot rows of `labels` for `k` classes; `None` for a model of one product.
    pub fn new(labels: &[usize], k: usize, device: &Device) -> Option<Cond> {
        if k == 0 || labels.is_empty() {
            return None;
        }
        let mut data = vec![0f32; labels.len() * k];
        for (row, &l) in labels.iter().enumerate() {
            data[row * k + l] = 1.0;
        }
        Some(Cond { one_hot: Tensor::<2>::from_data(TensorData::new(data, [labels.len(), k]), device) })
    }

    /// `x` `[B, C, H, W]` with the class planes appended.
    pub fn image(c: Option<&Cond>, x: Tensor<4>) -> Tensor<4> {
        match c {
            Some(c) => {
                let [b, _, h, w] = x.dims();
                let k = c.one_hot.dims()[1];
                let planes = c.one_hot.clone().reshape([b, k, 1, 1]).expand([b, k, h, w]);
                Tensor::cat(vec![x, planes], 1)
            }
            None => x,
        }
    }

    /// `z` `[B, L, 1, 1]` with the class vector appended.
    pub fn latent(c: Option<&Cond>, z: Tensor<4>) -> Tensor<4> {
        match c {
            Some(c) => {
                let [b, k] = c.one_hot.dims();
                Tensor::cat(vec![z, c.one_hot.clone().reshape([b, k, 1, 1])], 1)
            }
            None => z,
        }
    }
}
