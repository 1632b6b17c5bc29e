//! Vectorisable f32 exp and an exact inverse-CDF categorical draw over a cached row.
//!
//! A reverse step reads a row of float32 log-scores once: [`exp_blocks_f32`] writes `exp(l_y - shift)`
//! as f32 into a per-thread cache and sums it in blocks of [`BLOCK`] states (float64 accumulation). A
//! draw then scans the block sums and only one block of the cache ([`draw_blocks`]), so no pass over the
//! row is needed to find the drawn state. The draw is exact in float64: a uniform `u` with 53 random
//! bits, the target `u * total`, and a running f64 sum; no float32 Gumbel-max, which truncates tails
//! (Zheng et al. 2024, arXiv 2409.02908; SPEC section 5).

/// States per block of the cached row.
pub const BLOCK: usize = 64;

/// Lanes of the inner loops: eight f64 accumulators (two AVX2 registers).
const LANES: usize = 8;

/// 1.5 * 2^23: adding it rounds an f32 of magnitude < 2^22 to an integer held in the low mantissa bits
/// (round to nearest, and vectorised: a saturating `as i32` cast is scalarised by LLVM).
const ROUND_MAGIC_F32: f32 = 12_582_912.0;
/// ln 2 split in two for f32 Cody-Waite reduction: `LN2_HI_F32` has 9 significant bits, so
/// `k * LN2_HI_F32` is exact for |k| < 2^15; `LN2_HI_F32 + LN2_LO_F32` is ln 2 to about 1e-12 relative.
const LN2_HI_F32: f32 = 0.693_359_4; // 355 / 512
const LN2_LO_F32: f32 = -2.121_944_4e-4;
/// Coefficients c1..c5 of exp(r) ~ 1 + c1 r + ... + c5 r^5 on |r| <= ln2 / 2: a near-minimax fit of the
/// relative error (iteratively reweighted least squares on 2000 Chebyshev nodes, c0 fixed to 1 so that
/// exp(0) = 1 exactly), truncation error 9.5e-8 relative with the coefficients rounded to f32.
const EXP_C1: f32 = 0.999_999_7;
const EXP_C2: f32 = 0.499_991_5;
const EXP_C3: f32 = 0.166_676_36;
const EXP_C4: f32 = 0.041_897_93;
const EXP_C5: f32 = 0.008_290_314;
/// [`exp_f32`] of anything below this is 0: ln(2^-126) = -87.3365, the end of the normal f32 range.
pub const EXP_MIN_F32: f32 = -87.33;
/// [`exp_f32`] is accurate up to here (2^127 * sqrt 2 is still finite); above it the value is unspecified.
pub const EXP_MAX_F32: f32 = 88.0;

/// exp(x) in f32 on [`EXP_MIN_F32`, `EXP_MAX_F32`] (the row-max-shifted log-scores are <= 0),
/// vectorisable (no table, no branch: one select), the portable twin of the AVX2 path `exp8_avx2`.
///
/// Cody-Waite reduction `x = k ln2 + r`, |r| <= ln2 / 2 (k rounded to nearest with
/// [`ROUND_MAGIC_F32`]), a degree-5 polynomial of exp(r) (`EXP_C1`..`EXP_C5`, truncation 9.5e-8
/// relative) in Estrin's scheme with fused multiply-adds, times 2^k built from the exponent bits (k in
/// [-126, 127]: always normal). Accuracy (tested over a dense grid of [-87.33, 88]): under 2.5e-7
/// relative, a few f32 ulp. That is below the resolution of the input itself: a float32 log-score l is
/// known to half an ulp, 2^-24 |l| absolute, so exp(l) is only defined to 6e-8 |l| relative (4.8e-7 for
/// l in [-16, -8), a typical trained model's off-token score), and the rounding of the shift `l - m` in
/// f32 adds at most one ulp of max(|l|, |m|) of the same kind. Inputs below [`EXP_MIN_F32`] (and -inf)
/// give 0: a weight under 1.6e-38 of the row maximum's, far below the 1e-16 rounding of the f64 totals.
/// NaN gives NaN; above [`EXP_MAX_F32`] (and +inf) the value is unspecified (no undefined behaviour):
/// the callers never pass such inputs, except at an ignored entry whose value they overwrite.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    let t = x.mul_add(std::f32::consts::LOG2_E, ROUND_MAGIC_F32);
    let kf = t - ROUND_MAGIC_F32;
    // k as an integer: the difference of the mantissas (same exponent), in [-126, 127] on the range.
    let k = t.to_bits().wrapping_sub(ROUND_MAGIC_F32.to_bits()) as i32;
    let r = kf.mul_add(-LN2_LO_F32, kf.mul_add(-LN2_HI_F32, x));
    let r2 = r * r;
    let a0 = r.mul_add(EXP_C1, 1.0);
    let a1 = r.mul_add(EXP_C3, EXP_C2);
    let a2 = r.mul_add(EXP_C5, EXP_C4);
    let p = a2.mul_add(r2, a1).mul_add(r2, a0);
    let scale = f32::from_bits((k.wrapping_add(127) as u32) << 23);
    let y = p * scale;
    if x < EXP_MIN_F32 {
        0.0
    } else {
        y
    }
}

/// [`exp_f32`] on eight lanes with AVX2 + FMA intrinsics: the same operations in the same order, so
/// bit-identical to the scalar function (written out because LLVM's loop vectoriser leaves the scalar
/// form scalar).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn exp8_avx2(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let magic = _mm256_set1_ps(ROUND_MAGIC_F32);
    let t = _mm256_fmadd_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E), magic);
    let kf = _mm256_sub_ps(t, magic);
    let k = _mm256_sub_epi32(_mm256_castps_si256(t), _mm256_castps_si256(magic));
    let r = _mm256_fmadd_ps(kf, _mm256_set1_ps(-LN2_HI_F32), x);
    let r = _mm256_fmadd_ps(kf, _mm256_set1_ps(-LN2_LO_F32), r);
    let r2 = _mm256_mul_ps(r, r);
    let a0 = _mm256_fmadd_ps(r, _mm256_set1_ps(EXP_C1), _mm256_set1_ps(1.0));
    let a1 = _mm256_fmadd_ps(r, _mm256_set1_ps(EXP_C3), _mm256_set1_ps(EXP_C2));
    let a2 = _mm256_fmadd_ps(r, _mm256_set1_ps(EXP_C5), _mm256_set1_ps(EXP_C4));
    let p = _mm256_fmadd_ps(_mm256_fmadd_ps(a2, r2, a1), r2, a0);
    let scale = _mm256_slli_epi32::<23>(_mm256_add_epi32(k, _mm256_set1_epi32(127)));
    let y = _mm256_mul_ps(p, _mm256_castsi256_ps(scale));
    // x < EXP_MIN_F32 (false for NaN) gives 0.
    let lo = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(EXP_MIN_F32));
    _mm256_andnot_ps(lo, y)
}

/// The largest entry of `src` (-inf when empty; NaN entries are skipped) and a finiteness check: 0 when
/// every entry is finite, NaN otherwise.
#[inline(always)]
fn max_check_impl(src: &[f32]) -> (f32, f32) {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut chk = [0f32; LANES];
    let mut c8 = src.chunks_exact(LANES);
    for cv in &mut c8 {
        for j in 0..LANES {
            // A compare-and-select (one `vmaxps`), not `f32::max` (whose NaN rule costs more).
            acc[j] = if cv[j] > acc[j] { cv[j] } else { acc[j] };
            // v * 0 is 0 for a finite v and NaN for NaN or +-inf.
            chk[j] += cv[j] * 0.0;
        }
    }
    let mut m = f32::NEG_INFINITY;
    let mut k: f32 = chk.iter().sum();
    for &v in acc.iter().chain(c8.remainder()) {
        m = if v > m { v } else { m };
    }
    for &v in c8.remainder() {
        k += v * 0.0;
    }
    (m, k)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn max_check_avx2(src: &[f32]) -> (f32, f32) {
    max_check_impl(src)
}

/// The largest entry of `src` (-inf when empty; NaN entries are skipped), and 0 when every entry is
/// finite, NaN otherwise: one pass at memory speed, which also pulls `src` into the cache for
/// [`exp_blocks_f32`].
pub fn max_check(src: &[f32]) -> (f32, f32) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above); no other precondition.
            return unsafe { max_check_avx2(src) };
        }
    }
    max_check_impl(src)
}

#[inline(always)]
fn exp_blocks_f32_impl(
    src: &[f32],
    shift: f32,
    cache: &mut [f32],
    block_sums: &mut [f64],
) -> (f32, f32) {
    let mut max = f32::NEG_INFINITY;
    let mut chk = 0f32;
    for ((s, c), bs) in src
        .chunks(BLOCK)
        .zip(cache.chunks_mut(BLOCK))
        .zip(block_sums.iter_mut())
    {
        for (cv, &v) in c.iter_mut().zip(s) {
            *cv = exp_f32(v - shift);
            max = if v > max { v } else { max };
            chk += v * 0.0;
        }
        // Eight f64 lanes (the order of the AVX2 path), then the lanes pairwise, then the tail.
        let mut acc = [0f64; LANES];
        let mut c8 = c.chunks_exact(LANES);
        for cv in &mut c8 {
            for j in 0..LANES {
                acc[j] += cv[j] as f64;
            }
        }
        let tail = c8.remainder().iter().fold(0f64, |a, &v| a + v as f64);
        *bs = ((acc[0] + acc[4]) + (acc[1] + acc[5]))
            + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
            + tail;
    }
    (max, chk)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn exp_blocks_f32_avx2(
    src: &[f32],
    shift: f32,
    cache: &mut [f32],
    block_sums: &mut [f64],
) -> (f32, f32) {
    use std::arch::x86_64::*;
    let vshift = _mm256_set1_ps(shift);
    let vzero = _mm256_setzero_ps();
    let mut vmax = _mm256_set1_ps(f32::NEG_INFINITY);
    let mut vchk = _mm256_setzero_ps();
    let (mut max, mut chk) = (f32::NEG_INFINITY, 0f32);
    for ((s, c), bs) in src
        .chunks(BLOCK)
        .zip(cache.chunks_mut(BLOCK))
        .zip(block_sums.iter_mut())
    {
        // The f64 lanes of the portable loop: acc_lo holds lanes 0..4, acc_hi lanes 4..8.
        let mut acc_lo = _mm256_setzero_pd();
        let mut acc_hi = _mm256_setzero_pd();
        let mut s8 = s.chunks_exact(LANES);
        let mut c8 = c.chunks_exact_mut(LANES);
        for (sv, cv) in (&mut s8).zip(&mut c8) {
            // SAFETY: `sv` and `cv` hold exactly eight f32 each (unaligned loads and stores).
            let v = unsafe { _mm256_loadu_ps(sv.as_ptr()) };
            let e = exp8_avx2(_mm256_sub_ps(v, vshift));
            unsafe { _mm256_storeu_ps(cv.as_mut_ptr(), e) };
            vmax = _mm256_max_ps(v, vmax); // NaN in v: keeps vmax (the second operand)
            vchk = _mm256_add_ps(vchk, _mm256_mul_ps(v, vzero));
            acc_lo = _mm256_add_pd(acc_lo, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
            acc_hi = _mm256_add_pd(acc_hi, _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(e)));
        }
        let mut tail = 0f64;
        for (cv, &v) in c8.into_remainder().iter_mut().zip(s8.remainder()) {
            *cv = exp_f32(v - shift);
            tail += *cv as f64;
            max = if v > max { v } else { max };
            chk += v * 0.0;
        }
        let mut pair = [0f64; 4];
        // SAFETY: `pair` holds four f64.
        unsafe { _mm256_storeu_pd(pair.as_mut_ptr(), _mm256_add_pd(acc_lo, acc_hi)) };
        *bs = ((pair[0] + pair[1]) + (pair[2] + pair[3])) + tail;
    }
    let mut lanes = [0f32; LANES];
    // SAFETY: `lanes` holds eight f32.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), vmax) };
    for &v in &lanes {
        max = if v > max { v } else { max };
    }
    // SAFETY: as above.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), vchk) };
    (max, chk + lanes.iter().sum::<f32>())
}

/// Writes `cache[y] = exp_f32(src[y] - shift)` (the difference rounded in f32) and `block_sums[k] = sum
/// of cache over block k` accumulated in f64 (bit-identical on every CPU).
///
/// Returns the largest entry of `src` (NaN skipped; -inf when empty) and a finiteness check (0 when
/// every entry is finite, NaN otherwise), fused into the pass. The value of an entry more than
/// [`EXP_MAX_F32`] above `shift`, or non-finite, is unspecified: a caller that guessed `shift` checks the
/// returned maximum. `cache` must have `src.len()` entries and `block_sums` `src.len().div_ceil(BLOCK)`.
pub fn exp_blocks_f32(
    src: &[f32],
    shift: f32,
    cache: &mut [f32],
    block_sums: &mut [f64],
) -> (f32, f32) {
    debug_assert_eq!(cache.len(), src.len());
    debug_assert_eq!(block_sums.len(), src.len().div_ceil(BLOCK));
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above); no other precondition.
            return unsafe { exp_blocks_f32_avx2(src, shift, cache, block_sums) };
        }
    }
    exp_blocks_f32_impl(src, shift, cache, block_sums)
}

/// The weight of a cached value once clipped at `clip`: `max(0, v - clip)`.
#[inline(always)]
fn clipped(v: f64, clip: f64) -> f64 {
    let d = v - clip;
    if d > 0.0 {
        d
    } else {
        0.0
    }
}

#[inline(always)]
fn clipped_blocks_impl<T: Copy + Into<f64>>(cache: &[T], clip: f64, block_sums: &mut [f64]) {
    for (c, bs) in cache.chunks(BLOCK).zip(block_sums.iter_mut()) {
        let mut acc = [0f64; LANES];
        let mut c8 = c.chunks_exact(LANES);
        for cv in &mut c8 {
            for j in 0..LANES {
                acc[j] += clipped(cv[j].into(), clip);
            }
        }
        let tail: f64 = c8
            .remainder()
            .iter()
            .map(|&v| clipped(v.into(), clip))
            .sum();
        *bs = ((acc[0] + acc[4]) + (acc[1] + acc[5]))
            + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
            + tail;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn clipped_blocks_avx2<T: Copy + Into<f64>>(cache: &[T], clip: f64, block_sums: &mut [f64]) {
    clipped_blocks_impl(cache, clip, block_sums)
}

/// `block_sums[k] = sum over block k of max(0, cache[y] - clip)`.
pub fn clipped_blocks<T: Copy + Into<f64>>(cache: &[T], clip: f64, block_sums: &mut [f64]) {
    debug_assert_eq!(block_sums.len(), cache.len().div_ceil(BLOCK));
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above); the function has no other precondition.
            unsafe { clipped_blocks_avx2(cache, clip, block_sums) };
            return;
        }
    }
    clipped_blocks_impl(cache, clip, block_sums)
}

/// Recomputes the sum of the block holding state `y` (after `cache[y]` was changed).
pub fn refresh_block<T: Copy + Into<f64>>(cache: &[T], y: usize, block_sums: &mut [f64]) {
    let k = y / BLOCK;
    let hi = (k * BLOCK + BLOCK).min(cache.len());
    block_sums[k] = cache[k * BLOCK..hi].iter().map(|&v| v.into()).sum();
}

/// Draws a state with probability proportional to `max(0, values[y] - clip)`, given the block sums of
/// those weights, from a uniform `u` in [0, 1).
///
/// Inverse CDF with a running f64 sum: the target is `u * total`; the blocks are scanned by their sums,
/// then the one block that holds the target state by its entries. If rounding lets the running sum end
/// short of the target, the last state with positive weight (of the last block with a positive sum) is
/// returned, so a state of weight 0 is never drawn. Returns `None` when the total weight is not positive
/// and finite.
pub fn draw_blocks<T: Copy + Into<f64>>(
    values: &[T],
    block_sums: &[f64],
    clip: f64,
    u: f64,
) -> Option<usize> {
    let total: f64 = block_sums.iter().sum();
    if total.is_nan() || total <= 0.0 || total.is_infinite() {
        return None;
    }
    let target = u * total;
    let mut acc = 0.0;
    let mut last_block = None;
    for (k, &bs) in block_sums.iter().enumerate() {
        if bs > 0.0 {
            last_block = Some(k);
            let next = acc + bs;
            if target < next {
                return Some(scan_block(values, k, clip, acc, target));
            }
            acc = next;
        }
    }
    last_block.map(|k| scan_block(values, k, clip, f64::NEG_INFINITY, f64::INFINITY))
}

/// Within block `k`, the first state whose running sum (from `acc`) passes `target`, else the last state
/// of the block with positive weight.
fn scan_block<T: Copy + Into<f64>>(
    values: &[T],
    k: usize,
    clip: f64,
    acc: f64,
    target: f64,
) -> usize {
    let lo = k * BLOCK;
    let hi = (lo + BLOCK).min(values.len());
    let mut a = acc;
    let mut last = None;
    for (y, &v) in values[lo..hi].iter().enumerate() {
        let w = clipped(v.into(), clip);
        if w > 0.0 {
            a += w;
            last = Some(lo + y);
            if target < a {
                return lo + y;
            }
        }
    }
    // The block sum was positive, so some weight in it is (a block sum is a sum of non-negative terms).
    last.unwrap_or(hi - 1)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::rng::{Domain, RngKey};
    use proptest::prelude::*;

    fn rel_err(a: f64, b: f64) -> f64 {
        if a == b {
            0.0
        } else {
            ((a - b) / b).abs()
        }
    }

    #[test]
    fn exp_f32_is_accurate_on_the_shifted_range() {
        // A dense grid over [-87.33, 0] (4 million points, 2e-5 apart), compared in f64 with std's exp
        // of the same f32 input: the error is the kernel's own, not the input's rounding.
        let mut worst: f64 = 0.0;
        let n = 4_000_000;
        for j in 0..=n {
            let x = (EXP_MIN_F32 as f64 * j as f64 / n as f64) as f32;
            worst = worst.max(rel_err(exp_f32(x) as f64, (x as f64).exp()));
        }
        // Every f32 in the last few ulps of the range, near 0 and near the underflow end.
        for start in [-1e-6f32, EXP_MIN_F32 + 1e-4] {
            let mut x = start;
            for _ in 0..2000 {
                worst = worst.max(rel_err(exp_f32(x) as f64, (x as f64).exp()));
                x = f32::from_bits(x.to_bits() - 1); // the next f32 towards 0
                if x >= 0.0 {
                    break;
                }
            }
        }
        // Above 0 (not used by the kernels except at an overwritten entry, but specified up to 88).
        for j in 0..=200_000 {
            let x = (EXP_MAX_F32 as f64 * j as f64 / 200_000.0) as f32;
            worst = worst.max(rel_err(exp_f32(x) as f64, (x as f64).exp()));
        }
        assert!(worst < 2.5e-7, "worst relative error {worst:e}");
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(-0.0), 1.0);
    }

    #[test]
    fn exp_f32_ends_of_the_range() {
        // The underflow end: accurate down to EXP_MIN_F32, exactly 0 below (a flush, never garbage).
        let e = exp_f32(EXP_MIN_F32) as f64;
        assert!(rel_err(e, (EXP_MIN_F32 as f64).exp()) < 2.5e-7, "{e:e}");
        assert!(e >= f32::MIN_POSITIVE as f64);
        for x in [-87.34f32, -88.0, -100.0, -1e30, f32::MIN, f32::NEG_INFINITY] {
            assert_eq!(exp_f32(x), 0.0, "{x}");
        }
        assert!(exp_f32(f32::NAN).is_nan());
        assert!(exp_f32(EXP_MAX_F32).is_finite());
        // Monotone on a grid (no jump at a range-reduction boundary).
        let mut prev = 0.0;
        for j in 0..=200_000 {
            let v = exp_f32(EXP_MIN_F32 * (1.0 - j as f32 / 200_000.0));
            assert!(v >= prev, "{j}");
            prev = v;
        }
    }

    #[test]
    fn max_check_skips_nan_and_flags_non_finite() {
        let mut v: Vec<f32> = (0..37).map(|j| -(j as f32) * 0.5).collect();
        v[20] = 3.0;
        assert_eq!(max_check(&v), (3.0, 0.0));
        v[36] = 7.0; // in the remainder
        assert_eq!(max_check(&v), (7.0, 0.0));
        for (at, bad) in [
            (5, f32::NAN),
            (36, f32::NAN),
            (3, f32::NEG_INFINITY),
            (35, f32::INFINITY),
        ] {
            let mut w = v.clone();
            w[at] = bad;
            let (m, k) = max_check(&w);
            assert!(k.is_nan(), "{at} {bad}");
            if bad.is_nan() {
                assert_eq!(m, if at == 36 { 3.0 } else { 7.0 });
            }
        }
        assert_eq!(max_check(&[]), (f32::NEG_INFINITY, 0.0));
        let (m, k) = max_check(&[f32::NAN]);
        assert!(m == f32::NEG_INFINITY && k.is_nan());
        assert_eq!(max_check_impl(&v), max_check(&v));
    }

    #[test]
    fn exp_blocks_f32_matches_scalar() {
        let src: Vec<f32> = (0..1000)
            .map(|j| ((j * 37 % 101) as f32 - 100.0) * 0.9)
            .collect();
        let nb = src.len().div_ceil(BLOCK);
        let (mut cache, mut bs) = (vec![0f32; src.len()], vec![0.0; nb]);
        let (m, chk) = exp_blocks_f32(&src, 0.5, &mut cache, &mut bs);
        assert_eq!((m, chk), (max_check(&src).0, 0.0));
        assert_eq!(m, 0.0);
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            for at in [13, 997] {
                let mut s2 = src.clone();
                s2[at] = bad;
                let (m2, chk2) = exp_blocks_f32(&s2, 0.0, &mut cache, &mut bs);
                assert!(chk2.is_nan());
                assert_eq!(m2, if bad == f32::INFINITY { bad } else { 0.0 });
            }
        }
        exp_blocks_f32(&src, 0.5, &mut cache, &mut bs);
        for (y, &v) in src.iter().enumerate() {
            assert_eq!(cache[y], exp_f32(v - 0.5));
        }
        for k in 0..nb {
            let s: f64 = cache[k * BLOCK..((k + 1) * BLOCK).min(src.len())]
                .iter()
                .map(|&v| v as f64)
                .sum();
            assert!(rel_err(bs[k], s) < 1e-14);
        }
    }

    #[test]
    fn exp_blocks_f32_dispatch_is_bit_identical_to_the_portable_loop() {
        // The AVX2 intrinsics path (where the CPU has it) and the portable loop: the same cache and the
        // same block sums bit for bit, so draws do not depend on the CPU. Lengths with and without a
        // partial last block and a partial last vector; special values included.
        for len in [1usize, 7, 8, 64, 130, 1000] {
            let mut src: Vec<f32> = (0..len)
                .map(|j| ((j * 7919 % 211) as f32 - 200.0) * 0.45)
                .collect();
            for (j, special) in [-0.0f32, 0.0, -87.33, -87.34, 1e-30, -1e-30]
                .iter()
                .enumerate()
            {
                if j < len {
                    src[j * 37 % len] = *special;
                }
            }
            let nb = len.div_ceil(BLOCK);
            let (mut c1, mut b1) = (vec![0f32; len], vec![0.0; nb]);
            let (mut c2, mut b2) = (vec![0f32; len], vec![0.0; nb]);
            for shift in [0.0f32, 2.5] {
                let r1 = exp_blocks_f32(&src, shift, &mut c1, &mut b1);
                let r2 = exp_blocks_f32_impl(&src, shift, &mut c2, &mut b2);
                assert_eq!(r1.0, r2.0);
                assert_eq!(r1.1.to_bits(), r2.1.to_bits()); // NaN (the -inf entry) or 0 alike
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&c1), bits(&c2), "len {len}");
                assert_eq!(b1, b2, "len {len}");
            }
            let mut bad = src.clone();
            bad[len - 1] = f32::NAN;
            assert!(exp_blocks_f32(&bad, 0.0, &mut c1, &mut b1).1.is_nan());
            assert!(c1[len - 1].is_nan());
        }
    }

    #[test]
    fn clipped_blocks_clip_at_zero() {
        let cache: Vec<f64> = (0..200).map(|j| j as f64 * 0.01).collect();
        let mut bs = vec![0.0; 200usize.div_ceil(BLOCK)];
        clipped_blocks(&cache, 1.0, &mut bs);
        let want: f64 = cache.iter().map(|&v| (v - 1.0).max(0.0)).sum();
        assert!(rel_err(bs.iter().sum(), want) < 1e-14);
        assert_eq!(bs[0], 0.0); // every value in block 0 is below 1.0
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

    #[test]
    fn draw_follows_its_weights() {
        // 150 states over three blocks, some of weight zero, clipped at 0.2: 200_000 draws,
        // chi-square with < 150 dof; the 1 - 1e-6 quantile of chi2(150) is about 262.
        let values: Vec<f64> = (0..150).map(|j| ((j * 7919) % 13) as f64 * 0.1).collect();
        let clip = 0.2;
        let mut bs = vec![0.0; 150usize.div_ceil(BLOCK)];
        clipped_blocks(&values, clip, &mut bs);
        let w: Vec<f64> = values.iter().map(|&v| (v - clip).max(0.0)).collect();
        let tot: f64 = w.iter().sum();
        let p: Vec<f64> = w.iter().map(|&x| x / tot).collect();
        let mut counts = vec![0u64; 150];
        let key = RngKey::new(11, 0, 0);
        for n in 0..200_000 {
            let u = key.stream(Domain::Step, 0, n).uniform();
            counts[draw_blocks(&values, &bs, clip, u).unwrap()] += 1;
        }
        let c = chi2(&counts, &p);
        assert!(c < 262.0, "chi2 = {c}");
    }

    #[test]
    fn draw_extremes() {
        let values = vec![0.0, 0.0, 3.0, 0.0, 1.0, 0.0];
        let mut bs = vec![0.0; 1];
        clipped_blocks(&values, 0.0, &mut bs);
        assert_eq!(draw_blocks(&values, &bs, 0.0, 0.0), Some(2));
        // u just below 1 with a total that rounds: never a zero-weight state.
        assert_eq!(
            draw_blocks(&values, &bs, 0.0, 1.0 - f64::EPSILON / 2.0),
            Some(4)
        );
        // A target beyond the total (as rounding could give) falls back to the last positive state.
        assert_eq!(draw_blocks(&values, &bs, 0.0, 1.5), Some(4));
        let zeros = vec![0.0; 5];
        assert_eq!(draw_blocks(&zeros, &[0.0], 0.0, 0.3), None);
    }

    proptest! {
        #[test]
        fn draw_never_picks_zero_weight(
            w in proptest::collection::vec(prop_oneof![Just(0.0f64), 0.0f64..10.0], 1..300),
            u in 0.0f64..1.0,
        ) {
            let mut bs = vec![0.0; w.len().div_ceil(BLOCK)];
            clipped_blocks(&w, 0.0, &mut bs);
            match draw_blocks(&w, &bs, 0.0, u) {
                Some(y) => prop_assert!(w[y] > 0.0),
                None => prop_assert!(w.iter().all(|&v| v == 0.0)),
            }
        }
    }
}
