//! Turning a served bundle into its next version.
//!
//! - [`finetune`]: fine-tuning a bundle on new data, gated and installed as asked.
//! - [`gate`]: the held-out files and the rule the new bundle must pass to replace the
//!   served one.

pub mod finetune;
pub mod gate;
