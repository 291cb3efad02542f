//! How a model is put on a placement: built over its weights copied to a compute device (by
//! the memory plan, for one call), with the runner that computes there, its LoRA adapters
//! copied beside the weights and, for a streamed network, the slots its blocks go through.
//!
//! Each model file implements [`Place`] at its end; the pipelines run every component through
//! one function (`crate::pipeline::placed`) that asks the plan where the component goes and
//! builds the device copy with [`Place::place`].

use crate::lora::Adapters;
use crate::runtime::{DeviceWeights, GraphRunner};

/// A model that can be built over weights placed on a device. `Model<'x>` is the model type
/// over weights living for `'x`: the mapped file's (for the CPU model, the whole run) or the
/// device copy's (one call).
pub trait Place {
    type Model<'x>;
    /// The model's error (building it, attaching adapters or streaming slots).
    type Error;

    /// The model over `weights` (tensor names under `prefix`), computing with `runner`, with
    /// `adapters` (already on the device) attached where the model takes adapters and the
    /// streamed blocks of `weights` run through its slots where the model streams.
    fn place<'x>(
        weights: &'x DeviceWeights<'x>,
        prefix: &str,
        runner: GraphRunner<'x>,
        adapters: Option<&'x Adapters>,
    ) -> Result<Self::Model<'x>, Self::Error>;

    /// The block prefixes in execution order when the network streams (from the CPU model's
    /// config), else none.
    fn blocks(_cpu: &Self::Model<'_>) -> Vec<String> {
        Vec::new()
    }
}
