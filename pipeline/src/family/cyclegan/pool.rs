//! The image buffer of Zhu et al. (after Shrivastava et al. 2017): the discriminators see
//! fakes drawn from the last 50 generated images, not only the newest, which damps the
//! oscillation between generator and discriminator.

use burn::tensor::Tensor;
use vigil_model::rng::Rng;

/// Up to `capacity` past fakes, one image each.
pub struct ImagePool {
    capacity: usize,
    images: Vec<Tensor<4>>,
    rng: Rng,
}

impl ImagePool {
    /// An empty buffer; `seed` fixes which images are swapped.
    pub fn new(capacity: usize, seed: u64) -> Self {
        ImagePool { capacity, images: vec![], rng: Rng::new(seed) }
    }

    /// The batch the discriminator sees for the new fakes `batch` (`[B, C, H, W]`, detached):
    /// while the buffer fills, the new images; then for each image, with probability 1/2 a
    /// stored one (which the new image replaces), else the new one.
    pub fn query(&mut self, batch: Tensor<4>) -> Tensor<4> {
        if self.capacity == 0 {
            return batch;
        }
        let [b, c, h, w] = batch.dims();
        let mut out = Vec::with_capacity(b);
        for i in 0..b {
            let image = batch.clone().slice([i..i + 1, 0..c, 0..h, 0..w]);
            if self.images.len() < self.capacity {
                self.images.push(image.clone());
                out.push(image);
            } else if self.rng.uniform() < 0.5 {
                let k = self.rng.below(self.capacity);
                out.push(std::mem::replace(&mut self.images[k], image));
            } else {
                out.push(image);
            }
        }
        Tensor::cat(out, 0)
    }
}
