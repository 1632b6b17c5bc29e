//! The CTMC kernels of ddm: forward corruption and the reverse sampling steps of score-entropy
//! discrete diffusion (Lou, Meng, Ermon 2024), in closed form, over rayon threads.
//!
//! The kernels are pure Rust over slices; `python.rs` (feature `python`) is the thin PyO3 layer.

#[cfg(feature = "python")]
mod python;
