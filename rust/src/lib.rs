//! The CTMC kernels of ddm: forward corruption and the reverse sampling steps of score-entropy
//! discrete diffusion (Lou, Meng, Ermon 2024), in closed form, over rayon threads.
//!
//! The kernels are pure Rust over slices; `python.rs` (feature `python`) is the thin PyO3 layer.

pub mod categorical;
pub mod error;
pub mod graphs;
pub mod keyed;
pub mod proposal;
pub mod rng;
pub mod steps;
pub mod threads;
pub mod unmask;

#[cfg(feature = "python")]
mod python;

pub use error::KernelError;
pub use graphs::{corrupt, Graph, GraphKind};
pub use keyed::CounterKey;
pub use rng::RngKey;
pub use steps::{reverse_step, StepKind};
