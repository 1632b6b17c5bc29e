//! Vectorisable f32 exp and an exact inverse-CDF categorical draw over a cached row.
//!
//! A reverse step reads a row of float32 log-scores once: [`exp_blocks_f32`] writes `exp(l_y - shift)`
//! as f32 into a per-thread cache and sums it in blocks of [`BLOCK`] states (float64 accumulation). A
//! draw then scans the block sums and only one block of the cache ([`draw_blocks`]), so no pass over the
//! row is needed to find the drawn state. The draw is exact in float64: a uniform `u` with 53 random
//! bits, the target `u * total`, and a running f64 sum; no float32 Gumbel-max, which truncates tails
//! (Zheng et al. 2024, arXiv 2409.02908; docs/math.md section 5).
//!
//! Every pass over a row, every exp and every draw of the kernels lives here; five files, one concern
//! each:
//! - `simd_exp.rs`: [`exp_f32`], its AVX2 + FMA twin on eight lanes and its AVX-512F twin on sixteen
//!   (bit-identical);
//! - `rows.rs`: the passes over one row, [`max_check`] (and the one row check, [`checked_max`]),
//!   [`exp_blocks_f32`], [`clipped_blocks`] and [`refresh_block`], each dispatching at run time to an
//!   AVX2 build of the same loop when the CPU has it (and, for the exp pass, to an AVX-512F one first);
//! - `weights.rs`: [`exp_f64`] and the f64 weight passes of the transformed steps and the proposals,
//!   [`exp_weights`] and [`exp_weight_blocks`], with their AVX2 + FMA twins (bit-identical);
//! - `simd_expm1.rs`: [`expm1_f64`] and its AVX2 and AVX-512F twins (bit-identical), and the pass
//!   [`expm1_row`], for the uniform Tweedie step's exact f64 path;
//! - `draw.rs`: the inverse-CDF draws, from the block sums ([`draw_blocks`]) or over a list of weights
//!   ([`draw`]), on one running-sum scan.

mod draw;
mod rows;
mod simd_exp;
mod simd_expm1;
mod weights;

pub use draw::{draw, draw_blocks};
pub use rows::{
    affine_clipped_blocks, checked_max, clipped_blocks, exp_blocks_f32, max_check, refresh_block,
    sum_lanes_f64,
};
pub use simd_exp::{exp_f32, EXP_MAX_F32, EXP_MIN_F32};
pub use simd_expm1::{expm1_f64, expm1_row, EXPM1_MAX_F64, EXPM1_MIN_F64};
pub use weights::{exp_f64, exp_weight_blocks, exp_weights};

/// States per block of the cached row.
pub const BLOCK: usize = 64;

/// The weight of a cached value once clipped at `clip`: `max(0, v - clip)`.
#[inline(always)]
pub(super) fn clipped(v: f64, clip: f64) -> f64 {
    let d = v - clip;
    if d > 0.0 {
        d
    } else {
        0.0
    }
}

#[cfg(test)]
pub(crate) mod tests {
    /// Relative error of `a` against `b` (0 when equal, so infinities and zeros compare).
    pub(crate) fn rel_err(a: f64, b: f64) -> f64 {
        if a == b {
            0.0
        } else {
            ((a - b) / b).abs()
        }
    }

    /// Chi-square statistic of counts against probabilities (bins with p = 0 must have no counts).
    pub(crate) fn chi2(counts: &[u64], probs: &[f64]) -> f64 {
        let n: u64 = counts.iter().sum();
        let mut s = 0.0;
        for (&c, &p) in counts.iter().zip(probs) {
            if p == 0.0 {
                assert_eq!(c, 0, "a state of probability 0 was drawn");
            } else {
                let e = n as f64 * p;
                s += (c as f64 - e).powi(2) / e;
            }
        }
        s
    }
}
