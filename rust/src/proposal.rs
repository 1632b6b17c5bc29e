//! Temperature, top-k and top-p on the proposal distribution of a reverse step (docs/math.md section
//! 5.10; the torch twin is `ddm.sampling.proposal`).
//!
//! Every step's law on one position is "stay at x, or move to y != x" (`steps.rs` module doc). The
//! proposal distribution is the move law, over y != x (absorbing: the real tokens). The transform acts
//! on it and keeps the stay probability:
//!
//! 1. temperature T: w_y -> w_y^(1/T) (a jump step: exp((l_y - m) / T), one vectorised exp per state);
//! 2. top-k: keep the k largest weights (ties: the lower id first);
//! 3. top-p: rank by weight (ties: the lower id first) and keep each state whose predecessors hold less
//!    than p of the mass.
//!
//! Top-k is one `select_nth_unstable_by` (O(dim)); top-p sorts the ranking only as far as it needs, in
//! chunks of 64, 128, 256, ... states, each chunk found by a partial selection over the rest, so a
//! peaked law costs O(dim) and a flat one at most O(dim log dim). The draw is an exact float64 inverse
//! CDF over the kept weights. The weights are computed in f64 from the f32 log-scores; the uniform
//! Tweedie weights without cancellation, as in `steps::tweedie_precise`.

use std::cmp::Ordering;

use rayon::prelude::*;

use crate::categorical::{draw_blocks, max_check, BLOCK};
use crate::error::KernelError;
use crate::graphs::{check_levels, check_tokens_shape, Graph};
use crate::rng::{Domain, Rng, RngKey};
use crate::steps::{law, Law, StepKind};

// ---- exp in f64 (moved here from categorical.rs, which now keeps only the f32 path) ----

const LOG2E: f64 = std::f64::consts::LOG2_E;
/// ln 2 split in two (fdlibm's `ln2_hi` / `ln2_lo`): `k * LN2_HI` is exact for |k| < 2^11.
const LN2_HI: f64 = 6.931_471_803_691_238e-1;
const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
/// 1.5 * 2^52: adding it rounds a double of magnitude < 2^51 to an integer held in the low mantissa bits.
const ROUND_MAGIC: f64 = 6_755_399_441_055_744.0;
/// exp(x) overflows f64 above this.
const EXP_MAX: f64 = 709.782_712_893_384;
/// exp(x) rounds to 0 below this.
const EXP_MIN: f64 = -745.133_219_101_941_2;

/// exp(x) in f64, written so that LLVM vectorises it (no libm call, no table, no branch: selects only).
///
/// Cody-Waite range reduction `x = k ln2 + r`, |r| <= ln2 / 2, then the degree-12 Taylor polynomial of
/// exp(r) (truncation error r^13 / 13! < 2e-16 relative), then the scale 2^k built from the
/// exponent bits as 2^k1 * 2^k2 so that k in [-1075, 1024] never leaves the normal range of either
/// factor. Accuracy: a few ulp (< 1e-15 relative) on [-708, 709.78]; the subnormal range [EXP_MIN, -708)
/// is computed with one extra rounding; below EXP_MIN the result is 0, above EXP_MAX it is +inf; NaN
/// gives NaN. The polynomial uses fused multiply-adds (`mul_add`) everywhere, so the scalar and vector
/// paths, and every CPU, give bit-identical results (a CPU without FMA pays for a software fma).
#[inline(always)]
pub(crate) fn exp_f64(x: f64) -> f64 {
    let xc = x.clamp(EXP_MIN, EXP_MAX); // NaN stays NaN
    let t = xc * LOG2E + ROUND_MAGIC;
    let kf = t - ROUND_MAGIC;
    // k as an integer: the difference of the mantissas (same exponent), in [-1075, 1024].
    let k = t.to_bits().wrapping_sub(ROUND_MAGIC.to_bits()) as i64;
    let r = (xc - kf * LN2_HI) - kf * LN2_LO;
    // Estrin's scheme (dependency depth 5 instead of Horner's 12) with fused multiply-adds.
    let r2 = r * r;
    let r4 = r2 * r2;
    let r8 = r4 * r4;
    let a0 = r.mul_add(1.0, 1.0);
    let a1 = r.mul_add(1.0 / 6.0, 0.5);
    let a2 = r.mul_add(1.0 / 120.0, 1.0 / 24.0);
    let a3 = r.mul_add(1.0 / 5_040.0, 1.0 / 720.0);
    let a4 = r.mul_add(1.0 / 362_880.0, 1.0 / 40_320.0);
    let a5 = r.mul_add(1.0 / 39_916_800.0, 1.0 / 3_628_800.0);
    let a6: f64 = 1.0 / 479_001_600.0; // 1/12!
    let b0 = a1.mul_add(r2, a0);
    let b1 = a3.mul_add(r2, a2);
    let b2 = a5.mul_add(r2, a4);
    let c0 = b1.mul_add(r4, b0);
    let c1 = a6.mul_add(r4, b2);
    let p = c1.mul_add(r8, c0);
    // k = k1 + k2 with k1 = floor(k / 2) (a logical shift of k + 2048 > 0), both in [-538, 512].
    let k1 = (((k + 2048) as u64) >> 1) as i64 - 1024;
    let k2 = k - k1;
    let s1 = f64::from_bits(((k1 + 1023) as u64) << 52);
    let s2 = f64::from_bits(((k2 + 1023) as u64) << 52);
    let y = p * s1 * s2;
    if x > EXP_MAX {
        f64::INFINITY
    } else if x < EXP_MIN {
        0.0
    } else {
        y
    }
}

/// The transform of the proposal distribution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transform {
    /// T > 0, finite; 1 leaves the weights alone.
    pub temperature: f64,
    /// Keep the k >= 1 largest weights; None keeps all.
    pub top_k: Option<usize>,
    /// Keep the nucleus of mass p in (0, 1]; None keeps all.
    pub top_p: Option<f64>,
}

impl Transform {
    /// Checks the three options (errors name the argument).
    pub fn new(
        temperature: f64,
        top_k: Option<usize>,
        top_p: Option<f64>,
    ) -> Result<Self, KernelError> {
        if !(temperature > 0.0 && temperature.is_finite()) {
            return Err(KernelError::Value {
                arg: "temperature",
                msg: format!("must be a finite number > 0, got {temperature}"),
            });
        }
        if top_k == Some(0) {
            return Err(KernelError::Value {
                arg: "top_k",
                msg: "must be >= 1 (or None for no cut), got 0".into(),
            });
        }
        if let Some(p) = top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(KernelError::Value {
                    arg: "top_p",
                    msg: format!("must lie in (0, 1] (or None for no cut), got {p}"),
                });
            }
        }
        Ok(Self {
            temperature,
            top_k,
            top_p,
        })
    }

    /// Whether the transform truncates a law over `n` states (top-k below n, or top-p below 1).
    fn truncates(&self, n: usize) -> bool {
        self.top_k.is_some_and(|k| k < n) || self.top_p.is_some_and(|p| p < 1.0)
    }
}

/// The ranking order: larger weight first, then the lower id.
#[inline]
fn ranked(a: &(f64, u32), b: &(f64, u32)) -> Ordering {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
}

/// Top-k then top-p over the positive entries of `w` (non-negative, finite). Returns the kept states
/// as (weight, id), in no particular order, in `rank`.
pub fn truncate(w: &[f64], tf: &Transform, rank: &mut Vec<(f64, u32)>) {
    rank.clear();
    rank.extend(
        w.iter()
            .enumerate()
            .filter(|&(_, &v)| v > 0.0)
            .map(|(y, &v)| (v, y as u32)),
    );
    let mut m = rank.len();
    if let Some(k) = tf.top_k {
        if k < m {
            rank.select_nth_unstable_by(k - 1, ranked);
            m = k;
        }
    }
    if let Some(p) = tf.top_p.filter(|&p| p < 1.0) {
        let cand = &mut rank[..m];
        let target = p * cand.iter().map(|e| e.0).sum::<f64>();
        let (mut start, mut chunk, mut acc) = (0usize, 64usize, 0.0f64);
        let mut cut = m;
        'outer: while start < m {
            let end = (start + chunk).min(m);
            if end < m {
                cand[start..].select_nth_unstable_by(end - start - 1, ranked);
            }
            cand[start..end].sort_unstable_by(ranked);
            for (j, e) in cand.iter().enumerate().take(end).skip(start) {
                if acc >= target {
                    cut = j;
                    break 'outer;
                }
                acc += e.0;
            }
            start = end;
            chunk *= 2;
        }
        m = cut;
    }
    rank.truncate(m);
}

/// An exact float64 inverse-CDF draw over non-negative weights: the first state whose running sum
/// passes `u * total`, or the last one of positive weight if rounding leaves the sum short.
pub(crate) fn draw(weights: impl Iterator<Item = (f64, usize)> + Clone, u: f64) -> Option<usize> {
    let total: f64 = weights.clone().map(|e| e.0).sum();
    if !(total > 0.0 && total.is_finite()) {
        return None;
    }
    let target = u * total;
    let (mut acc, mut last) = (0.0, None);
    for (v, y) in weights {
        if v > 0.0 {
            acc += v;
            last = Some(y);
            if target < acc {
                return Some(y);
            }
        }
    }
    last
}

/// Applies the transform to the move weights `w` (0 at the current state) and draws a state.
fn draw_move(w: &mut [f64], tf: &Transform, rank: &mut Vec<(f64, u32)>, u: f64) -> Option<usize> {
    if tf.truncates(w.len()) {
        truncate(w, tf, rank);
        rank.sort_unstable_by_key(|e| e.1); // inverse CDF in id order, as over the whole row
        draw(rank.iter().map(|&(v, y)| (v, y as usize)), u)
    } else {
        draw(w.iter().copied().zip(0..), u)
    }
}

const LANES: usize = 8;

#[inline(always)]
fn exp_weights_impl(row: &[f32], m: f64, inv_t: f64, w: &mut [f64]) -> f64 {
    let mut acc = [0f64; LANES];
    let mut r8 = row.chunks_exact(LANES);
    let mut w8 = w.chunks_exact_mut(LANES);
    if inv_t == 1.0 {
        for (rc, wc) in (&mut r8).zip(&mut w8) {
            for j in 0..LANES {
                wc[j] = exp_f64(rc[j] as f64 - m);
                acc[j] += wc[j];
            }
        }
    } else {
        for (rc, wc) in (&mut r8).zip(&mut w8) {
            for j in 0..LANES {
                let d = rc[j] as f64 - m;
                acc[j] += exp_f64(d);
                wc[j] = exp_f64(d * inv_t);
            }
        }
    }
    let mut tail = 0.0;
    for (wy, &l) in w8.into_remainder().iter_mut().zip(r8.remainder()) {
        let d = l as f64 - m;
        tail += exp_f64(d);
        *wy = exp_f64(d * inv_t);
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn exp_weights_avx2(row: &[f32], m: f64, inv_t: f64, w: &mut [f64]) -> f64 {
    exp_weights_impl(row, m, inv_t, w)
}

/// `w_y = exp((l_y - m) / T)` (with `inv_t = 1 / T`) over a row, and returns `sum_y exp(l_y - m)`: the
/// vectorised exp of `categorical.rs`, with hardware FMA where the CPU has it.
pub(crate) fn exp_weights(row: &[f32], m: f64, inv_t: f64, w: &mut [f64]) -> f64 {
    debug_assert_eq!(row.len(), w.len());
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above); no other precondition.
            return unsafe { exp_weights_avx2(row, m, inv_t, w) };
        }
    }
    exp_weights_impl(row, m, inv_t, w)
}

#[inline(always)]
fn exp_weight_blocks_impl(
    row: &[f32],
    m: f64,
    inv_t: f64,
    want_s: bool,
    w: &mut [f64],
    bs: &mut [f64],
) -> f64 {
    let two = want_s && inv_t != 1.0;
    let mut s_acc = [0f64; LANES];
    for ((rb, wb), b) in row
        .chunks(BLOCK)
        .zip(w.chunks_mut(BLOCK))
        .zip(bs.iter_mut())
    {
        let mut acc = [0f64; LANES];
        let mut r8 = rb.chunks_exact(LANES);
        let mut w8 = wb.chunks_exact_mut(LANES);
        if two {
            for (rc, wc) in (&mut r8).zip(&mut w8) {
                for j in 0..LANES {
                    let d = rc[j] as f64 - m;
                    wc[j] = exp_f64(d * inv_t);
                    acc[j] += wc[j];
                    s_acc[j] += exp_f64(d);
                }
            }
        } else {
            for (rc, wc) in (&mut r8).zip(&mut w8) {
                for j in 0..LANES {
                    wc[j] = exp_f64((rc[j] as f64 - m) * inv_t);
                    acc[j] += wc[j];
                }
            }
        }
        let mut tail = 0.0;
        for (wy, &l) in w8.into_remainder().iter_mut().zip(r8.remainder()) {
            let d = l as f64 - m;
            *wy = exp_f64(d * inv_t);
            tail += *wy;
            if two {
                s_acc[0] += exp_f64(d);
            }
        }
        *b = ((acc[0] + acc[4]) + (acc[1] + acc[5]))
            + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
            + tail;
    }
    if !want_s {
        0.0
    } else if two {
        ((s_acc[0] + s_acc[4]) + (s_acc[1] + s_acc[5]))
            + ((s_acc[2] + s_acc[6]) + (s_acc[3] + s_acc[7]))
    } else {
        bs.iter().sum()
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn exp_weight_blocks_avx2(
    row: &[f32],
    m: f64,
    inv_t: f64,
    want_s: bool,
    w: &mut [f64],
    bs: &mut [f64],
) -> f64 {
    exp_weight_blocks_impl(row, m, inv_t, want_s, w, bs)
}

/// [`exp_weights`] that also writes the block sums of `w` into `bs` (`BLOCK` states each) for
/// `categorical::draw_blocks`; returns `sum_y exp(l_y - m)` when `want_s`, else 0.
fn exp_weight_blocks(
    row: &[f32],
    m: f64,
    inv_t: f64,
    want_s: bool,
    w: &mut [f64],
    bs: &mut [f64],
) -> f64 {
    debug_assert_eq!(bs.len(), row.len().div_ceil(BLOCK));
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above); no other precondition.
            return unsafe { exp_weight_blocks_avx2(row, m, inv_t, want_s, w, bs) };
        }
    }
    exp_weight_blocks_impl(row, m, inv_t, want_s, w, bs)
}

/// Per-thread scratch.
#[derive(Default)]
struct Scratch {
    w: Vec<f64>,
    rank: Vec<(f64, u32)>,
    /// Block sums of `w` (`categorical::BLOCK` states each) for the inverse-CDF draw.
    bs: Vec<f64>,
}

fn row_max(row: &[f32], cur: Option<usize>, at: (usize, usize)) -> Result<f64, KernelError> {
    let (m, chk) = match cur {
        None => max_check(row),
        Some(x) => {
            let (a, ka) = max_check(&row[..x]);
            let (b, kb) = max_check(&row[x + 1..]);
            (a.max(b), ka + kb)
        }
    };
    if chk != 0.0 {
        check_row(row, cur, at)?; // NaN or +inf is an error; -inf only is fine (max_check skips NaN)
    }
    Ok(m as f64)
}

/// A NaN or +inf log-score outside `cur` is an error; -inf is a weight of 0.
fn check_row(row: &[f32], cur: Option<usize>, at: (usize, usize)) -> Result<(), KernelError> {
    match row
        .iter()
        .enumerate()
        .find(|&(y, v)| (v.is_nan() || *v == f32::INFINITY) && Some(y) != cur)
    {
        Some((y, &value)) => Err(KernelError::NonFiniteLogScore {
            b: at.0,
            i: at.1,
            y,
            value,
        }),
        None => Ok(()),
    }
}

#[allow(clippy::too_many_arguments)]
fn step_position(
    graph: Graph,
    law: Law,
    tf: &Transform,
    x: i64,
    row: &[f32],
    rng: &mut Rng,
    scratch: &mut Scratch,
    at: (usize, usize),
) -> Result<i64, KernelError> {
    let (row, cur) = match graph.mask() {
        Some(m) if x != m => return Ok(x),
        Some(_) => (&row[..graph.vocab_size], None),
        None => (row, Some(x as usize)),
    };
    if matches!(law, Law::Stay) || (cur.is_some() && row.len() == 1) {
        return Ok(x);
    }
    if scratch.w.len() < row.len() {
        scratch.w.resize(row.len(), 0.0);
    }
    let w = &mut scratch.w[..row.len()];
    match law {
        Law::Stay => Ok(x),
        Law::Jump { c, ln_c } => {
            let m = row_max(row, cur, at)?;
            if m == f64::NEG_INFINITY {
                return if c.is_infinite() {
                    Err(KernelError::NoMass { b: at.0, i: at.1 })
                } else {
                    Ok(x)
                };
            }
            // S' = sum_{y != x} exp(l_y - m) >= 1; r = c e^m S' is the mass that leaves x.
            let inv_t = 1.0 / tf.temperature;
            if cur.is_none() && !tf.truncates(row.len()) {
                // Absorbing at MASK, temperature only: tempered weights with block sums in one pass,
                // then a draw that reads the block sums and one block (as the plain kernel).
                let nb = row.len().div_ceil(BLOCK);
                if scratch.bs.len() < nb {
                    scratch.bs.resize(nb, 0.0);
                }
                let bs = &mut scratch.bs[..nb];
                let s = exp_weight_blocks(row, m, inv_t, !c.is_infinite(), w, bs);
                let r = if c.is_infinite() {
                    f64::INFINITY
                } else if m.abs() < 700.0 {
                    c * m.exp() * s
                } else {
                    (ln_c + m + s.ln()).exp()
                };
                if r < 1.0 && rng.uniform() < 1.0 - r {
                    return Ok(x);
                }
                return Ok(draw_blocks(w, bs, 0.0, rng.uniform()).map_or(x, |y| y as i64));
            }
            let s = match cur {
                None => exp_weights(row, m, inv_t, w),
                Some(x) => {
                    let (wl, wr) = w.split_at_mut(x);
                    wr[0] = 0.0;
                    exp_weights(&row[..x], m, inv_t, wl)
                        + exp_weights(&row[x + 1..], m, inv_t, &mut wr[1..])
                }
            };
            let r = if c.is_infinite() {
                f64::INFINITY
            } else if m.abs() < 700.0 {
                c * m.exp() * s
            } else {
                (ln_c + m + s.ln()).exp()
            };
            if r < 1.0 && rng.uniform() < 1.0 - r {
                return Ok(x);
            }
            Ok(draw_move(w, tf, &mut scratch.rank, rng.uniform()).map_or(x, |y| y as i64))
        }
        Law::Tweedie { q, e_neg, n } => {
            check_row(row, cur, at)?;
            let x = x as usize;
            let shift = row
                .iter()
                .enumerate()
                .filter(|&(y, _)| y != x)
                .map(|(_, &v)| v as f64)
                .fold(0.0, f64::max);
            // As steps::tweedie_precise: move weights max(0, v_y + add) q / N, stay max(0, stay) (..).
            let (add, stay) = if shift <= 600.0 {
                let mut e = 0.0;
                for (y, (wy, &l)) in w.iter_mut().zip(row).enumerate() {
                    *wy = if y == x { 0.0 } else { (l as f64).exp_m1() };
                    e += *wy;
                }
                let a = e_neg - q * e / n;
                (a, a)
            } else {
                let mut sum = 0.0;
                for (y, (wy, &l)) in w.iter_mut().zip(row).enumerate() {
                    *wy = if y == x {
                        0.0
                    } else {
                        (l as f64 - shift).exp()
                    };
                    sum += *wy;
                }
                let one = (-shift).exp();
                let t = q * (one + sum) / n;
                (-t, one - t)
            };
            let w_stay = stay.max(0.0) * (e_neg + q / n);
            let mut moved = 0.0;
            let mut top: f64 = 0.0;
            for (y, wy) in w.iter_mut().enumerate() {
                *wy = if y == x {
                    0.0
                } else {
                    (*wy + add).max(0.0) * (q / n)
                };
                moved += *wy;
                top = top.max(*wy);
            }
            let total = w_stay + moved;
            if !(total > 0.0 && total.is_finite()) || rng.uniform() * total < w_stay {
                return Ok(x as i64);
            }
            if tf.temperature != 1.0 {
                let inv_t = 1.0 / tf.temperature;
                for wy in w.iter_mut() {
                    *wy = if *wy > 0.0 {
                        ((*wy / top).ln() * inv_t).exp()
                    } else {
                        0.0
                    };
                }
            }
            let u = rng.uniform();
            Ok(draw_move(w, tf, &mut scratch.rank, u).map_or(x as i64, |y| y as i64))
        }
    }
}

/// One reverse step with the proposal distribution transformed by `tf`, written into `out`.
///
/// The arguments and the keying are those of [`crate::steps::reverse_step`]: position (b, i) draws from
/// the stream (seed, step, seq_offset + b, i), so the result does not depend on the thread count. The
/// law is the step's with its move distribution transformed (module doc); it is not drawn bit for bit
/// as the plain step, so callers use `reverse_step` when the transform is the identity.
#[allow(clippy::too_many_arguments)]
pub fn proposal_step(
    kind: StepKind,
    graph: Graph,
    x: &[i64],
    log_score: &[f32],
    level: &[f64],
    len: usize,
    key: RngKey,
    tf: Transform,
    out: &mut [i64],
) -> Result<(), KernelError> {
    let batch = level.len();
    let n = check_tokens_shape(x, out, batch, len)?;
    let dim = graph.dim();
    if n.checked_mul(dim) != Some(log_score.len()) {
        return Err(KernelError::Shape {
            arg: "log_score",
            msg: format!(
                "has {} elements, expected B * L * dim = {batch} * {len} * {dim}",
                log_score.len()
            ),
        });
    }
    check_levels(kind.level_arg(), level)?;
    if n == 0 {
        return Ok(());
    }
    graph.check_tokens("x", x, len)?;
    let tf = Transform::new(tf.temperature, tf.top_k, tf.top_p)?;
    let laws: Vec<Law> = level.iter().map(|&v| law(graph, kind, v)).collect();
    out.par_iter_mut()
        .zip(x.par_iter())
        .zip(log_score.par_chunks(dim))
        .enumerate()
        .try_for_each_init(Scratch::default, |scratch, (j, ((o, &t), row))| {
            let (b, i) = (j / len, j % len);
            let mut rng = key.stream(Domain::Step, b, i);
            *o = step_position(graph, laws[b], &tf, t, row, &mut rng, scratch, (b, i))?;
            Ok(())
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::categorical::tests::chi2;
    use proptest::prelude::*;

    /// Top-k then top-p by a full sort (the brute-force reference), as normalised probabilities.
    fn brute(w: &[f64], tf: &Transform) -> Vec<f64> {
        let mut idx: Vec<usize> = (0..w.len()).filter(|&y| w[y] > 0.0).collect();
        idx.sort_by(|&a, &b| w[b].total_cmp(&w[a]).then(a.cmp(&b)));
        if let Some(k) = tf.top_k {
            idx.truncate(k);
        }
        if let Some(p) = tf.top_p {
            let total: f64 = idx.iter().map(|&y| w[y]).sum();
            let mut acc = 0.0;
            let mut keep = vec![];
            for &y in &idx {
                if acc >= p * total {
                    break;
                }
                keep.push(y);
                acc += w[y];
            }
            idx = keep;
        }
        let tot: f64 = idx.iter().map(|&y| w[y]).sum();
        let mut out = vec![0.0; w.len()];
        for &y in &idx {
            out[y] = w[y] / tot;
        }
        out
    }

    fn kept(w: &[f64], tf: &Transform) -> Vec<f64> {
        let mut rank = vec![];
        truncate(w, tf, &mut rank);
        let tot: f64 = rank.iter().map(|e| e.0).sum();
        let mut out = vec![0.0; w.len()];
        for &(v, y) in &rank {
            out[y as usize] = v / tot;
        }
        out
    }

    /// One position's step law from the formulas of docs/math.md 5.2-5.4 (std exp, no fusion).
    fn step_probs(g: Graph, kind: StepKind, x: usize, row: &[f32], d: f64) -> Vec<f64> {
        let dim = g.dim();
        let n = g.vocab_size as f64;
        let mut s: Vec<f64> = row.iter().map(|&v| (v as f64).exp()).collect();
        s[x] = 1.0;
        let mut p = vec![0.0; dim];
        match (g.absorbing, kind) {
            (true, _) => {
                let c = match kind {
                    StepKind::Euler => d,
                    _ => d.exp_m1(),
                };
                let sum: f64 = s[..dim - 1].iter().sum();
                for y in 0..dim - 1 {
                    p[y] = if kind == StepKind::Denoise {
                        s[y] / sum
                    } else {
                        c * s[y]
                    };
                }
                if kind != StepKind::Denoise {
                    p[x] = (1.0 - c * sum).max(0.0);
                }
            }
            (false, StepKind::Euler) => {
                for y in (0..dim).filter(|&y| y != x) {
                    p[y] = d / n * s[y];
                }
                p[x] = (1.0 - p.iter().sum::<f64>()).max(0.0);
            }
            (false, _) => {
                let s_all: f64 = s.iter().sum();
                for (y, py) in p.iter_mut().enumerate() {
                    let stag = d.exp() * s[y] + (1.0 - d.exp()) * s_all / n;
                    let tr = if y == x { (-d).exp() } else { 0.0 } + (1.0 - (-d).exp()) / n;
                    *py = (stag * tr).max(0.0);
                }
            }
        }
        let tot: f64 = p.iter().sum();
        p.iter().map(|v| v / tot).collect()
    }

    #[test]
    fn exp_f64_matches_std() {
        let mut worst: f64 = 0.0;
        for j in 0..=200_000 {
            let x = -708.0 + 1417.0 * j as f64 / 200_000.0;
            worst = worst.max(((exp_f64(x) - x.exp()) / x.exp()).abs());
        }
        assert!(worst < 1e-15, "{worst:e}");
        assert_eq!(exp_f64(f64::NEG_INFINITY), 0.0);
        assert_eq!(exp_f64(0.0), 1.0);
    }

    /// The reference law of a transformed step: `step_probs` with its move part transformed.
    fn reference(
        g: Graph,
        kind: StepKind,
        x: usize,
        r: &[f32],
        level: f64,
        tf: &Transform,
    ) -> Vec<f64> {
        let p = step_probs(g, kind, x, r, level);
        let stay = p[x];
        let mut w = p.clone();
        w[x] = 0.0;
        let t = tf.temperature;
        let top = w.iter().cloned().fold(0.0, f64::max);
        let w: Vec<f64> = w
            .iter()
            .map(|&v| {
                if v > 0.0 {
                    (v / top).powf(1.0 / t)
                } else {
                    0.0
                }
            })
            .collect();
        let mut out: Vec<f64> = brute(&w, tf).iter().map(|v| v * (1.0 - stay)).collect();
        out[x] = stay;
        out
    }

    #[test]
    fn truncation_matches_a_full_sort_on_many_sizes() {
        // Sizes around the chunk boundaries of the top-p partial sort.
        let mut rng = RngKey::new(3, 0, 0).stream(Domain::Step, 0, 0);
        for &n in &[1usize, 2, 5, 63, 64, 65, 200, 1000, 5000] {
            let w: Vec<f64> = (0..n)
                .map(|_| {
                    let u = rng.uniform();
                    if u < 0.1 {
                        0.0
                    } else {
                        (-8.0 * rng.uniform()).exp()
                    }
                })
                .collect();
            for (k, p) in [
                (None, Some(0.5)),
                (None, Some(0.999)),
                (Some(3), None),
                (Some(100), Some(0.9)),
                (Some(1), Some(0.01)),
            ] {
                let tf = Transform::new(1.0, k, p).unwrap();
                if w.iter().all(|&v| v == 0.0) {
                    continue;
                }
                assert_eq!(kept(&w, &tf), brute(&w, &tf), "n={n} k={k:?} p={p:?}");
            }
        }
    }

    #[test]
    fn bad_options_name_the_argument() {
        for (t, k, p, arg) in [
            (0.0, None, None, "temperature"),
            (-1.0, None, None, "temperature"),
            (f64::NAN, None, None, "temperature"),
            (1.0, Some(0), None, "top_k"),
            (1.0, None, Some(0.0), "top_p"),
            (1.0, None, Some(1.5), "top_p"),
        ] {
            let e = Transform::new(t, k, p).unwrap_err();
            assert!(
                matches!(e, KernelError::Value { arg: a, .. } if a == arg),
                "{e}"
            );
        }
    }

    fn draw_counts(
        g: Graph,
        kind: StepKind,
        x: usize,
        r: &[f32],
        level: f64,
        tf: Transform,
    ) -> Vec<u64> {
        let (batch, len) = (100, 400);
        let xs = vec![x as i64; batch * len];
        let ls: Vec<f32> = r
            .iter()
            .copied()
            .cycle()
            .take(batch * len * r.len())
            .collect();
        let mut out = vec![-1; xs.len()];
        proposal_step(
            kind,
            g,
            &xs,
            &ls,
            &vec![level; batch],
            len,
            RngKey::new(5, 1, 0),
            tf,
            &mut out,
        )
        .unwrap();
        let mut c = vec![0u64; g.dim()];
        for &t in &out {
            c[t as usize] += 1;
        }
        c
    }

    #[test]
    fn draws_follow_the_transformed_law() {
        let mut rng = RngKey::new(9, 0, 0).stream(Domain::Step, 0, 0);
        for absorbing in [true, false] {
            let n = 30;
            let g = Graph::new(absorbing, n).unwrap();
            let r: Vec<f32> = (0..g.dim())
                .map(|_| -4.0 + 5.0 * rng.uniform() as f32)
                .collect();
            let x = if absorbing { n } else { 7 };
            for kind in [StepKind::Euler, StepKind::Analytic, StepKind::Denoise] {
                for (t, k, p) in [
                    (0.5, None, None),
                    (2.0, Some(5), None),
                    (0.8, None, Some(0.7)),
                ] {
                    let tf = Transform::new(t, k, p).unwrap();
                    let want = reference(g, kind, x, &r, 0.3, &tf);
                    let c = draw_counts(g, kind, x, &r, 0.3, tf);
                    let dof = want.iter().filter(|&&v| v > 0.0).count() - 1;
                    let stat = chi2(&c, &want);
                    // 1e-6 upper quantile, Wilson-Hilferty, as in steps.rs
                    let kf = dof.max(1) as f64;
                    let lim = kf
                        * (1.0 - 2.0 / (9.0 * kf) + 4.8 * (2.0 / (9.0 * kf)).sqrt()).powi(3)
                        + 5.0;
                    assert!(stat < lim, "{g:?} {kind:?} {tf:?}: chi2 {stat} dof {dof}");
                    for (y, (&cy, &py)) in c.iter().zip(&want).enumerate() {
                        assert!(py > 0.0 || cy == 0, "state {y} of probability 0 drawn");
                    }
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn truncation_is_the_brute_force_one(
            ws in proptest::collection::vec(0.0f64..1.0, 1..300), k in 1usize..40, p in 0.01f64..1.0,
            use_k: bool, use_p: bool,
        ) {
            prop_assume!(ws.iter().any(|&v| v > 0.0));
            let tf = Transform::new(1.0, use_k.then_some(k), use_p.then_some(p)).unwrap();
            let a = kept(&ws, &tf);
            let b = brute(&ws, &tf);
            for (x, y) in a.iter().zip(&b) {
                prop_assert!((x - y).abs() < 1e-12, "{:?} vs {:?}", a, b);
            }
        }

        #[test]
        fn same_result_for_any_thread_count(
            absorbing: bool, n in 1usize..200, batch in 1usize..4, len in 1usize..10, seed: u64,
        ) {
            let g = Graph::new(absorbing, n).unwrap();
            let x: Vec<i64> = (0..batch * len).map(|j| (j * 5 % g.dim()) as i64).collect();
            let mut r = RngKey::new(seed, 0, 0).stream(Domain::Step, 0, 0);
            let ls: Vec<f32> = (0..batch * len * g.dim()).map(|_| -3.0 + 4.0 * r.uniform() as f32).collect();
            let tf = Transform::new(0.7, Some(5), Some(0.8)).unwrap();
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let mut out = vec![0; x.len()];
                pool.install(|| proposal_step(StepKind::Analytic, g, &x, &ls, &vec![0.4; batch], len,
                    RngKey::new(seed, 3, 0), tf, &mut out)).unwrap();
                out
            };
            prop_assert_eq!(run(1), run(2));
        }
    }
}
