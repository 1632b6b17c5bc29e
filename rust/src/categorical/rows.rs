//! The passes over one row of the per-thread cache: the maximum and finiteness check, the fused exp pass,
//! the clipped block sums and the refresh of one block. Each pass is one portable loop (`*_impl`) that
//! LLVM vectorises; where the CPU has AVX2 (and FMA) at run time the same loop is also built with those
//! features enabled (or, for the exp pass, written with intrinsics, in an AVX2 + FMA and an AVX-512F
//! build, the latter preferred), with bit-identical results.

use super::simd_exp::exp_f32;
#[cfg(target_arch = "x86_64")]
use super::simd_exp::{exp16_avx512, exp8_avx2};
use super::{clipped, BLOCK};
use crate::error::KernelError;

/// Lanes of the inner loops: eight accumulators (f32: one AVX2 register; f64: two).
pub(super) const LANES: usize = 8;

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

/// The largest log-score of `row` other than the ignored one at `cur` (-inf when there is none), checked:
/// a NaN or +inf anywhere but at `cur` is an error naming position `at` and the state (-inf is allowed: a
/// weight of 0). The one row check of every kernel.
pub fn checked_max(
    row: &[f32],
    cur: Option<usize>,
    at: (usize, usize),
) -> Result<f32, KernelError> {
    let (m, chk) = match cur {
        None => max_check(row),
        Some(x) => {
            let (m1, k1) = max_check(&row[..x]);
            let (m2, k2) = max_check(&row[x + 1..]);
            (m1.max(m2), k1 + k2)
        }
    };
    if chk != 0.0 {
        let bad = row
            .iter()
            .enumerate()
            .find(|&(y, v)| (v.is_nan() || *v == f32::INFINITY) && Some(y) != cur);
        if let Some((y, &value)) = bad {
            return Err(KernelError::NonFiniteLogScore {
                b: at.0,
                i: at.1,
                y,
                value,
            });
        }
    }
    Ok(m)
}

/// How far ahead of the entry being read the x86 exp passes prefetch the row, in f32 entries (8 KiB).
/// The hardware prefetcher alone left most of the DRAM latency exposed: the passes took the time of the
/// exp plus that of the read, where they now take about the larger of the two (BENCHMARKS.md, part 4;
/// on that AMD EPYC 2 KiB ahead was slower, 4 KiB about 8% slower, 16 and 32 KiB no better).
#[cfg(target_arch = "x86_64")]
const PREFETCH_AHEAD: usize = 2048;

/// Prefetches, into all cache levels, the `BLOCK` entries (four 64-byte lines) [`PREFETCH_AHEAD`] past
/// the start of `block`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch_ahead(block: &[f32]) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    for line in 0..BLOCK / 16 {
        // A prefetch is a hint that never faults, so an address past the end of the row is harmless;
        // `wrapping_add` keeps the pointer arithmetic defined there.
        let p = block.as_ptr().wrapping_add(PREFETCH_AHEAD + 16 * line);
        // SAFETY: SSE is part of x86_64; prefetching reads nothing and has no memory-safety effect.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p as *const i8) };
    }
}

/// The finiteness check of an exp pass, from its block sums: 0 when every sum is finite, NaN otherwise
/// (the same value on every path). A NaN or +inf entry makes its cached value, hence its block sum, NaN
/// (`exp_f32` of NaN is NaN, and of +inf too: its reduction computes inf - inf); -inf is the weight 0,
/// a valid entry. Checking the sums (one per [`BLOCK`] entries) instead of every entry keeps a
/// loop-carried operation out of the inner loops, where it cost a third of the AVX-512 pass.
fn block_sums_check(block_sums: &[f64]) -> f32 {
    let mut k = 0f64;
    for &v in block_sums {
        k += v * 0.0;
    }
    if k == 0.0 {
        0.0
    } else {
        f32::NAN
    }
}

/// Sums one block's eight f64 lanes pairwise, then adds the scalar tail (the order of every path).
#[inline(always)]
fn lanes_sum(acc: &[f64; LANES], tail: f64) -> f64 {
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

#[inline(always)]
fn exp_blocks_f32_impl(
    src: &[f32],
    shift: f32,
    cache: &mut [f32],
    block_sums: &mut [f64],
) -> (f32, f32) {
    let mut max = f32::NEG_INFINITY;
    for ((s, c), bs) in src
        .chunks(BLOCK)
        .zip(cache.chunks_mut(BLOCK))
        .zip(block_sums.iter_mut())
    {
        for (cv, &v) in c.iter_mut().zip(s) {
            *cv = exp_f32(v - shift);
            max = if v > max { v } else { max };
        }
        // Eight f64 lanes (the order of the SIMD paths), then the lanes pairwise, then the tail.
        let mut acc = [0f64; LANES];
        let mut c8 = c.chunks_exact(LANES);
        for cv in &mut c8 {
            for j in 0..LANES {
                acc[j] += cv[j] as f64;
            }
        }
        let tail = c8.remainder().iter().fold(0f64, |a, &v| a + v as f64);
        *bs = lanes_sum(&acc, tail);
    }
    (max, block_sums_check(block_sums))
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
    let mut vmax = _mm256_set1_ps(f32::NEG_INFINITY);
    let mut max = f32::NEG_INFINITY;
    for ((s, c), bs) in src
        .chunks(BLOCK)
        .zip(cache.chunks_mut(BLOCK))
        .zip(block_sums.iter_mut())
    {
        prefetch_ahead(s);
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
            acc_lo = _mm256_add_pd(acc_lo, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
            acc_hi = _mm256_add_pd(acc_hi, _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(e)));
        }
        let mut tail = 0f64;
        for (cv, &v) in c8.into_remainder().iter_mut().zip(s8.remainder()) {
            *cv = exp_f32(v - shift);
            tail += *cv as f64;
            max = if v > max { v } else { max };
        }
        *bs = pairs_sum_avx2(_mm256_add_pd(acc_lo, acc_hi)) + tail;
    }
    let mut lanes = [0f32; LANES];
    // SAFETY: `lanes` holds eight f32.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), vmax) };
    for &v in &lanes {
        max = if v > max { v } else { max };
    }
    (max, block_sums_check(block_sums))
}

/// [`lanes_sum`] of eight f64 lanes without the tail, given `p = [a0 + a4, a1 + a5, a2 + a6, a3 + a7]`:
/// the same additions in the same order, `(p0 + p1) + (p2 + p3)`, in two vector steps (a scalar
/// reduction through memory cost 8% of the AVX-512 pass).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
fn pairs_sum_avx2(p: std::arch::x86_64::__m256d) -> f64 {
    use std::arch::x86_64::*;
    // h = [p0 + p1, p0 + p1, p2 + p3, p2 + p3]
    let h = _mm256_hadd_pd(p, p);
    _mm_cvtsd_f64(_mm_add_sd(
        _mm256_castpd256_pd128(h),
        _mm256_extractf128_pd::<1>(h),
    ))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn exp_blocks_f32_avx512(
    src: &[f32],
    shift: f32,
    cache: &mut [f32],
    block_sums: &mut [f64],
) -> (f32, f32) {
    use std::arch::x86_64::*;
    let vshift = _mm512_set1_ps(shift);
    let mut vmax = _mm512_set1_ps(f32::NEG_INFINITY);
    let mut max = f32::NEG_INFINITY;
    // The eight f64 lanes of the portable loop live in one register: of sixteen entries, the low eight
    // are one chunk of the portable loop and the high eight the next, added in that order.
    let sum16 = |acc: __m512d, e: __m512| {
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(e)));
        _mm512_add_pd(
            _mm512_add_pd(acc, _mm512_cvtps_pd(_mm512_castps512_ps256(e))),
            _mm512_cvtps_pd(hi),
        )
    };
    let lanes_sum = |acc: __m512d| {
        pairs_sum_avx2(_mm256_add_pd(
            _mm512_castpd512_pd256(acc),
            _mm512_extractf64x4_pd::<1>(acc),
        ))
    };
    let full = src.len() / BLOCK * BLOCK;
    let (src_full, src_last) = src.split_at(full);
    let (cache_full, cache_last) = cache.split_at_mut(full);
    // Full blocks: four vectors of sixteen, no remainder to handle (the tail of the portable loop is
    // +0.0 there, and a block sum, of entries >= +0.0 or NaN, is never -0.0: adding it changes no bit).
    for ((s, c), bs) in src_full
        .chunks_exact(BLOCK)
        .zip(cache_full.chunks_exact_mut(BLOCK))
        .zip(block_sums.iter_mut())
    {
        prefetch_ahead(s);
        let mut acc = _mm512_setzero_pd();
        for q in 0..BLOCK / (2 * LANES) {
            // SAFETY: a block holds BLOCK = 64 f32, so entries 16q..16q + 16 are in `s` and `c`
            // (unaligned loads and stores).
            let v = unsafe { _mm512_loadu_ps(s.as_ptr().add(2 * LANES * q)) };
            let e = exp16_avx512(_mm512_sub_ps(v, vshift));
            unsafe { _mm512_storeu_ps(c.as_mut_ptr().add(2 * LANES * q), e) };
            vmax = _mm512_max_ps(v, vmax); // NaN in v: keeps vmax (the second operand)
            acc = sum16(acc, e);
        }
        *bs = lanes_sum(acc);
    }
    // The last, partial block (if any): chunks of sixteen, at most one of eight, then scalars.
    if !src_last.is_empty() {
        let mut acc = _mm512_setzero_pd();
        let mut s16 = src_last.chunks_exact(2 * LANES);
        let mut c16 = cache_last.chunks_exact_mut(2 * LANES);
        for (sv, cv) in (&mut s16).zip(&mut c16) {
            // SAFETY: `sv` and `cv` hold exactly sixteen f32 each (unaligned loads and stores).
            let v = unsafe { _mm512_loadu_ps(sv.as_ptr()) };
            let e = exp16_avx512(_mm512_sub_ps(v, vshift));
            unsafe { _mm512_storeu_ps(cv.as_mut_ptr(), e) };
            vmax = _mm512_max_ps(v, vmax);
            acc = sum16(acc, e);
        }
        let (s_rest, c_rest) = (s16.remainder(), c16.into_remainder());
        let mut done = 0;
        if s_rest.len() >= LANES {
            // SAFETY: `s_rest` and `c_rest` hold at least eight f32 each.
            let v = unsafe { _mm256_loadu_ps(s_rest.as_ptr()) };
            let e = exp8_avx2(_mm256_sub_ps(v, _mm256_set1_ps(shift)));
            unsafe { _mm256_storeu_ps(c_rest.as_mut_ptr(), e) };
            acc = _mm512_add_pd(acc, _mm512_cvtps_pd(e));
            for &v in &s_rest[..LANES] {
                max = if v > max { v } else { max };
            }
            done = LANES;
        }
        let mut tail = 0f64;
        for (cv, &v) in c_rest[done..].iter_mut().zip(&s_rest[done..]) {
            *cv = exp_f32(v - shift);
            tail += *cv as f64;
            max = if v > max { v } else { max };
        }
        block_sums[full / BLOCK] = lanes_sum(acc) + tail;
    }
    let mut lanes = [0f32; 2 * LANES];
    // SAFETY: `lanes` holds sixteen f32.
    unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), vmax) };
    for &v in &lanes {
        max = if v > max { v } else { max };
    }
    (max, block_sums_check(block_sums))
}

/// Writes `cache[y] = exp_f32(src[y] - shift)` (the difference rounded in f32) and `block_sums[k] = sum
/// of cache over block k` accumulated in f64 (bit-identical on every CPU).
///
/// Returns the largest entry of `src` (NaN skipped; -inf when empty) and a finiteness check of the
/// block sums: 0 when they are all finite, NaN otherwise, which is the case when some entry is NaN or
/// +inf (-inf is a weight of exactly 0 and passes). The value of an entry more than
/// [`EXP_MAX_F32`](super::EXP_MAX_F32) above `shift`, or non-finite, is unspecified: a caller that
/// guessed `shift` checks the returned maximum. `cache` must have `src.len()` entries and `block_sums`
/// `src.len().div_ceil(BLOCK)`.
///
/// Three builds of the same loop, chosen at run time: AVX-512F (sixteen lanes), AVX2 + FMA (eight
/// lanes), and the portable loop; the x86 ones also prefetch the row 8 KiB ahead.
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
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F, hence AVX2 and FMA (checked just above); no other
            // precondition.
            return unsafe { exp_blocks_f32_avx512(src, shift, cache, block_sums) };
        }
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

/// The sum of `v` in f64 over eight lanes (entry y into lane y mod 8, the lanes added pairwise as in
/// the block sums, then the tail): an order LLVM vectorises, the same on every CPU.
pub fn sum_lanes_f64(v: &[f64]) -> f64 {
    let mut acc = [0f64; LANES];
    let mut c8 = v.chunks_exact(LANES);
    for cv in &mut c8 {
        for j in 0..LANES {
            acc[j] += cv[j];
        }
    }
    lanes_sum(&acc, c8.remainder().iter().sum())
}

#[inline(always)]
fn affine_clipped_blocks_impl(w: &mut [f64], add: f64, scale: f64, block_sums: &mut [f64]) {
    for (c, bs) in w.chunks_mut(BLOCK).zip(block_sums.iter_mut()) {
        let mut acc = [0f64; LANES];
        let mut c8 = c.chunks_exact_mut(LANES);
        for cv in &mut c8 {
            for j in 0..LANES {
                cv[j] = clipped(cv[j], -add) * scale;
                acc[j] += cv[j];
            }
        }
        let mut tail = 0f64;
        for v in c8.into_remainder() {
            *v = clipped(*v, -add) * scale;
            tail += *v;
        }
        *bs = lanes_sum(&acc, tail);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn affine_clipped_blocks_avx2(w: &mut [f64], add: f64, scale: f64, block_sums: &mut [f64]) {
    affine_clipped_blocks_impl(w, add, scale, block_sums)
}

/// Rewrites `w[y] = max(0, w[y] + add) * scale` and writes `block_sums[k] = sum of w over block k`
/// (eight lanes, the order of the exp pass; bit-identical on every CPU).
pub fn affine_clipped_blocks(w: &mut [f64], add: f64, scale: f64, block_sums: &mut [f64]) {
    debug_assert_eq!(block_sums.len(), w.len().div_ceil(BLOCK));
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above); no other precondition.
            unsafe { affine_clipped_blocks_avx2(w, add, scale, block_sums) };
            return;
        }
    }
    affine_clipped_blocks_impl(w, add, scale, block_sums)
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
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn checked_max_is_the_max_outside_cur_or_names_the_first_bad_entry(
            row in proptest::collection::vec(
                prop_oneof![
                    8 => -50.0f32..50.0,
                    1 => Just(f32::NEG_INFINITY),
                    1 => Just(f32::NAN),
                    1 => Just(f32::INFINITY),
                ],
                1..150,
            ),
            cur_at in 0usize..150,
            use_cur: bool,
        ) {
            let cur = use_cur.then_some(cur_at % row.len());
            let bad = (0..row.len())
                .find(|&y| Some(y) != cur && (row[y].is_nan() || row[y] == f32::INFINITY));
            match checked_max(&row, cur, (2, 3)) {
                Ok(m) => {
                    prop_assert!(bad.is_none());
                    let want = (0..row.len())
                        .filter(|&y| Some(y) != cur)
                        .map(|y| row[y])
                        .fold(f32::NEG_INFINITY, f32::max);
                    prop_assert_eq!(m, want);
                }
                Err(KernelError::NonFiniteLogScore { b: 2, i: 3, y, .. }) => {
                    prop_assert_eq!(Some(y), bad);
                }
                Err(e) => prop_assert!(false, "unexpected error {}", e),
            }
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
                assert_eq!(m2, if bad == f32::INFINITY { bad } else { 0.0 });
                if bad == f32::NEG_INFINITY {
                    // The weight 0, exactly: a valid entry.
                    assert_eq!((chk2, cache[at]), (0.0, 0.0));
                } else {
                    assert!(chk2.is_nan() && cache[at].is_nan() && bs[at / BLOCK].is_nan());
                }
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

    type ExpPass = fn(&[f32], f32, &mut [f32], &mut [f64]) -> (f32, f32);

    /// Every build of the exp pass this CPU can run, by name (the portable loop first).
    fn exp_passes() -> Vec<(&'static str, ExpPass)> {
        let mut v: Vec<(&'static str, ExpPass)> =
            vec![("portable", |s, sh, c, b| exp_blocks_f32_impl(s, sh, c, b))];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                // SAFETY: the CPU supports AVX2 and FMA (checked just above).
                v.push(("avx2", |s, sh, c, b| unsafe {
                    exp_blocks_f32_avx2(s, sh, c, b)
                }));
            }
            if is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU supports AVX-512F, hence AVX2 and FMA (checked just above).
                v.push(("avx512", |s, sh, c, b| unsafe {
                    exp_blocks_f32_avx512(s, sh, c, b)
                }));
            }
        }
        v
    }

    #[test]
    fn exp_blocks_f32_paths_are_bit_identical_to_the_portable_loop() {
        // Each SIMD build this CPU has (AVX-512F, AVX2 + FMA) and the dispatched one against the portable
        // loop: the same cache, block sums, maximum and check bit for bit, so draws do not depend on the
        // CPU. Lengths with and without a partial last block, whose remainder has 0..15 entries (the
        // AVX-512 loop ends a block with a chunk of eight when 8..15 are left); special values included.
        let passes = exp_passes();
        eprintln!(
            "exp pass builds tested: {:?}",
            passes.iter().map(|p| p.0).collect::<Vec<_>>()
        );
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let mut lens: Vec<usize> = vec![1, 7, 8, 15, 16, 17, 24, 64, 130, 1000, 50_258];
        lens.extend((0..16).map(|r| 2 * BLOCK + 16 + r));
        for len in lens {
            let mut src: Vec<f32> = (0..len)
                .map(|j| ((j * 7919 % 211) as f32 - 200.0) * 0.45)
                .collect();
            for (j, special) in [
                -0.0f32,
                0.0,
                -87.33,
                -87.34,
                1e-30,
                -1e-30,
                f32::NEG_INFINITY,
            ]
            .iter()
            .enumerate()
            {
                if j < len {
                    src[j * 37 % len] = *special;
                }
            }
            let nb = len.div_ceil(BLOCK);
            let (mut c0, mut b0) = (vec![0f32; len], vec![0.0; nb]);
            let (mut c1, mut b1) = (vec![0f32; len], vec![0.0; nb]);
            for shift in [0.0f32, 2.5, -3.0] {
                let r0 = exp_blocks_f32_impl(&src, shift, &mut c0, &mut b0);
                let dispatched: ExpPass = exp_blocks_f32;
                for (name, pass) in passes.iter().chain([&("dispatched", dispatched)]) {
                    c1.fill(f32::NAN);
                    let r1 = pass(&src, shift, &mut c1, &mut b1);
                    assert_eq!(r1.0.to_bits(), r0.0.to_bits(), "{name} len {len}");
                    assert_eq!(r1.1.to_bits(), r0.1.to_bits(), "{name} len {len}");
                    assert_eq!(bits(&c1), bits(&c0), "{name} len {len}");
                    assert_eq!(
                        b1.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        b0.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                        "{name} len {len}"
                    );
                }
            }
            for at in [0, len / 2, len - 1] {
                for bad in [f32::NAN, f32::INFINITY] {
                    let mut s2 = src.clone();
                    s2[at] = bad;
                    for (name, pass) in &passes {
                        let (m, chk) = pass(&s2, 0.0, &mut c1, &mut b1);
                        assert!(chk.is_nan() && c1[at].is_nan(), "{name} len {len} at {at}");
                        assert_eq!(m == f32::INFINITY, bad == f32::INFINITY, "{name} len {len}");
                    }
                }
            }
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
