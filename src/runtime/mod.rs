//! Runtime: turning weight files into ggml tensors, the device-memory accountant, weights on
//! the device (resident or streamed through slots), the graph runner models compute through,
//! and the VRAM planner.

pub mod accountant;
pub mod device;
pub mod devices;
pub mod plan;
pub mod runner;
pub mod weights;

pub use accountant::{hint, Accountant, Lease, OverBudget};
pub use device::{ComputeDevice, DeviceError, DeviceWeights, Residency, StreamStats};
pub use runner::{Built, GraphRunner, GraphSizes, Graphs};
pub use weights::{Fp8Load, LoadError, WeightStore};
