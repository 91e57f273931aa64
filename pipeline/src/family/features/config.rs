//! What the feature families share in their options: the backbone and the input's shape.

use crate::backbone::Variant;

/// The feature families' shared options (`train.toml` keys of the same names).
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureConfig {
    /// The pretrained backbone (`lite0`: EfficientNet-Lite0; `lite1`, `lite2`: see the
    /// measurements in docs/training.md for why Lite0 stays the default).
    pub backbone: Variant,
    /// Height / width of the model input, for parts that are not square (about `size`²
    /// pixels in that shape). Measured on the training images at the start of a run when
    /// absent (square within a quarter), then kept in the run's `train.toml`.
    pub aspect: Option<f32>,
}

impl Default for FeatureConfig {
    fn default() -> Self {
        FeatureConfig { backbone: Variant::Lite0, aspect: None }
    }
}
