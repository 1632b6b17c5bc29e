//! The passes over one row of the per-thread cache: the maximum and finiteness check, the fused exp pass,
//! the clipped block sums and the refresh of one block. Each pass is one portable loop (`*_impl`) that
//! LLVM vectorises; where the CPU has AVX2 (and FMA) at run time the same loop is also built with those
//! features enabled (or, for the exp pass, written with intrinsics), with bit-identical results.

#[cfg(target_arch = "x86_64")]
use super::simd_exp::exp8_avx2;
use super::simd_exp::exp_f32;
use super::{clipped, BLOCK};

/// Lanes of the inner loops: eight accumulators (f32: one AVX2 register; f64: two).
const LANES: usize = 8;

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
/// [`EXP_MAX_F32`](super::EXP_MAX_F32) above `shift`, or non-finite, is unspecified: a caller that guessed `shift` checks the
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::categorical::tests::rel_err;

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
}
