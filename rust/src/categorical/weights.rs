//! The f64 weight passes of the transformed steps and the proposals: [`exp_f64`], a vectorisable f64 exp,
//! and the passes [`exp_weights`] and [`exp_weight_blocks`] over one row, each one portable loop that
//! LLVM vectorises, also built with AVX2 + FMA and dispatched to it at run time when the CPU has both
//! (bit-identical: the polynomial uses fused multiply-adds everywhere).

use super::rows::LANES;
use super::BLOCK;

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
pub fn exp_f64(x: f64) -> f64 {
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
/// vectorised [`exp_f64`], with hardware FMA where the CPU has it.
pub fn exp_weights(row: &[f32], m: f64, inv_t: f64, w: &mut [f64]) -> f64 {
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
/// [`super::draw_blocks`]; returns `sum_y exp(l_y - m)` when `want_s`, else 0.
pub fn exp_weight_blocks(
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn the_passes_agree_with_their_scalar_definition() {
        // Row lengths around the lane and block sizes, temperatures 1 and not 1.
        for n in [0usize, 1, 7, 8, 9, 63, 64, 65, 200] {
            let row: Vec<f32> = (0..n).map(|j| -((j * 37 % 23) as f32) * 0.7).collect();
            for inv_t in [1.0, 1.7] {
                let mut w = vec![0.0; n];
                let s = exp_weights(&row, -0.5, inv_t, &mut w);
                let mut w2 = vec![0.0; n];
                let mut bs = vec![0.0; n.div_ceil(BLOCK)];
                let s2 = exp_weight_blocks(&row, -0.5, inv_t, true, &mut w2, &mut bs);
                let want: f64 = row.iter().map(|&l| (l as f64 + 0.5).exp()).sum();
                assert!((s - want).abs() <= 1e-12 * want.max(1.0), "{n} {inv_t}");
                assert!((s2 - want).abs() <= 1e-12 * want.max(1.0), "{n} {inv_t}");
                for (y, (&a, &b)) in w.iter().zip(&w2).enumerate() {
                    assert_eq!(a, b);
                    assert_eq!(a, exp_f64((row[y] as f64 + 0.5) * inv_t));
                }
                let tot: f64 = bs.iter().sum();
                assert!((tot - w.iter().sum::<f64>()).abs() <= 1e-12 * tot.max(1.0));
            }
        }
    }
}
