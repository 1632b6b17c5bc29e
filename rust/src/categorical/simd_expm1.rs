//! expm1 in f64 for the uniform Tweedie step's exact path (`steps::tweedie_precise`): a portable
//! function, its AVX2 + FMA twin on four lanes and its AVX-512F twin on eight, bit-identical to it (the
//! same operations in the same order), and the pass [`expm1_row`] over a row of f32 log-scores.
//!
//! std's `f64::exp_m1` is a scalar libm call (about 4.5 ns per entry here): it made the exact path 5x
//! the one-pass step (BENCHMARKS.md). This one is vectorised and as accurate on the range the
//! step uses (tested against std: within 2 ulp).

/// 1.5 * 2^52: adding it rounds an f64 of magnitude < 2^51 to an integer held in the low mantissa bits.
const ROUND_MAGIC_F64: f64 = 6_755_399_441_055_744.0;
/// ln 2 split in two for Cody-Waite reduction (fdlibm's): `LN2_HI_F64` has 32 significant bits, so
/// `k * LN2_HI_F64` is exact for |k| < 2^21; `LN2_HI_F64 + LN2_LO_F64` is ln 2 to about 1e-26 relative.
const LN2_HI_F64: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000); // 6.93147180369123816490e-01
const LN2_LO_F64: f64 = f64::from_bits(0x3dea_39ef_3579_3c76); // 1.90821492927058770002e-10
/// Taylor coefficients 1/(j + 2)!, j = 0..11, of q(r) in expm1(r) = r + r^2 q(r) (degree 13; on
/// |r| <= ln2 / 2 the first term left out, r^14 / 14!, is under 1.2e-17 of expm1(r)).
const Q: [f64; 12] = [
    1.0 / 2.0,
    1.0 / 6.0,
    1.0 / 24.0,
    1.0 / 120.0,
    1.0 / 720.0,
    1.0 / 5_040.0,
    1.0 / 40_320.0,
    1.0 / 362_880.0,
    1.0 / 3_628_800.0,
    1.0 / 39_916_800.0,
    1.0 / 479_001_600.0,
    1.0 / 6_227_020_800.0,
];
/// [`expm1_f64`] of anything below this is -1: e^-40 = 4.2e-18 is under half an ulp of 1 (5.5e-17),
/// so -1 is the correctly rounded value there.
pub const EXPM1_MIN_F64: f64 = -40.0;
/// [`expm1_f64`] of anything above this is +inf (2^k must stay a normal f64: k <= 1023). The true value
/// overflows only above 709.78; the step passes f32 log-scores below 664 (its shift is at most 600).
pub const EXPM1_MAX_F64: f64 = 709.0;

/// e^x - 1 in f64 without cancellation near 0, vectorisable (no table, no branch: selects only), the
/// portable twin of `expm1x4_avx2` and `expm1x8_avx512`.
///
/// Reduction x = k ln2 + r, |r| <= ln2 / 2 (k rounded to nearest with `ROUND_MAGIC_F64`, Cody-Waite
/// with fused multiply-adds), expm1(r) = r + r^2 q(r) with q of degree 11 in Estrin's scheme, then
/// expm1(x) = 2^k expm1(r) + (2^k - 1) in one fused multiply-add (2^k - 1 is exact for |k| <= 53, and the
/// sum has no cancellation: for k != 0 the result is at least 0.29 in magnitude). Accuracy (tested
/// against std's exp_m1 on dense grids of [-40, 709]): within 2 ulp. Below [`EXPM1_MIN_F64`] (and -inf):
/// -1; above [`EXPM1_MAX_F64`] (and +inf): +inf; NaN gives NaN; -0.0 gives +0.0.
#[inline(always)]
pub fn expm1_f64(x: f64) -> f64 {
    let t = x.mul_add(std::f64::consts::LOG2_E, ROUND_MAGIC_F64);
    let kf = t - ROUND_MAGIC_F64;
    // k as an integer: the difference of the mantissas (same exponent), in [-58, 1023] on the range.
    let k = t.to_bits().wrapping_sub(ROUND_MAGIC_F64.to_bits()) as i64;
    let r = kf.mul_add(-LN2_LO_F64, kf.mul_add(-LN2_HI_F64, x));
    let r2 = r * r;
    let r4 = r2 * r2;
    let r8 = r4 * r4;
    let q01 = r.mul_add(Q[1], Q[0]);
    let q23 = r.mul_add(Q[3], Q[2]);
    let q45 = r.mul_add(Q[5], Q[4]);
    let q67 = r.mul_add(Q[7], Q[6]);
    let q89 = r.mul_add(Q[9], Q[8]);
    let q1011 = r.mul_add(Q[11], Q[10]);
    let q03 = r2.mul_add(q23, q01);
    let q47 = r2.mul_add(q67, q45);
    let q811 = r2.mul_add(q1011, q89);
    let q = r8.mul_add(q811, r4.mul_add(q47, q03));
    let p = r2.mul_add(q, r);
    let scale = f64::from_bits((k.wrapping_add(1023) as u64) << 52);
    let y = scale.mul_add(p, scale - 1.0);
    if x < EXPM1_MIN_F64 {
        -1.0
    } else if x > EXPM1_MAX_F64 {
        f64::INFINITY
    } else {
        y
    }
}

/// [`expm1_f64`] on four lanes with AVX2 + FMA intrinsics: the same operations in the same order.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(super) fn expm1x4_avx2(x: std::arch::x86_64::__m256d) -> std::arch::x86_64::__m256d {
    use std::arch::x86_64::*;
    let c = _mm256_set1_pd;
    let magic = c(ROUND_MAGIC_F64);
    let t = _mm256_fmadd_pd(x, c(std::f64::consts::LOG2_E), magic);
    let kf = _mm256_sub_pd(t, magic);
    let k = _mm256_sub_epi64(_mm256_castpd_si256(t), _mm256_castpd_si256(magic));
    let r = _mm256_fmadd_pd(kf, c(-LN2_HI_F64), x);
    let r = _mm256_fmadd_pd(kf, c(-LN2_LO_F64), r);
    let r2 = _mm256_mul_pd(r, r);
    let r4 = _mm256_mul_pd(r2, r2);
    let r8 = _mm256_mul_pd(r4, r4);
    let q01 = _mm256_fmadd_pd(r, c(Q[1]), c(Q[0]));
    let q23 = _mm256_fmadd_pd(r, c(Q[3]), c(Q[2]));
    let q45 = _mm256_fmadd_pd(r, c(Q[5]), c(Q[4]));
    let q67 = _mm256_fmadd_pd(r, c(Q[7]), c(Q[6]));
    let q89 = _mm256_fmadd_pd(r, c(Q[9]), c(Q[8]));
    let q1011 = _mm256_fmadd_pd(r, c(Q[11]), c(Q[10]));
    let q03 = _mm256_fmadd_pd(r2, q23, q01);
    let q47 = _mm256_fmadd_pd(r2, q67, q45);
    let q811 = _mm256_fmadd_pd(r2, q1011, q89);
    let q = _mm256_fmadd_pd(r8, q811, _mm256_fmadd_pd(r4, q47, q03));
    let p = _mm256_fmadd_pd(r2, q, r);
    let scale = _mm256_castsi256_pd(_mm256_slli_epi64::<52>(_mm256_add_epi64(
        k,
        _mm256_set1_epi64x(1023),
    )));
    let y = _mm256_fmadd_pd(scale, p, _mm256_sub_pd(scale, c(1.0)));
    let lo = _mm256_cmp_pd::<_CMP_LT_OQ>(x, c(EXPM1_MIN_F64));
    let hi = _mm256_cmp_pd::<_CMP_GT_OQ>(x, c(EXPM1_MAX_F64));
    _mm256_blendv_pd(_mm256_blendv_pd(y, c(-1.0), lo), c(f64::INFINITY), hi)
}

/// [`expm1_f64`] on eight lanes with AVX-512F intrinsics: the same operations in the same order.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) fn expm1x8_avx512(x: std::arch::x86_64::__m512d) -> std::arch::x86_64::__m512d {
    use std::arch::x86_64::*;
    let c = _mm512_set1_pd;
    let magic = c(ROUND_MAGIC_F64);
    let t = _mm512_fmadd_pd(x, c(std::f64::consts::LOG2_E), magic);
    let kf = _mm512_sub_pd(t, magic);
    let k = _mm512_sub_epi64(_mm512_castpd_si512(t), _mm512_castpd_si512(magic));
    let r = _mm512_fmadd_pd(kf, c(-LN2_HI_F64), x);
    let r = _mm512_fmadd_pd(kf, c(-LN2_LO_F64), r);
    let r2 = _mm512_mul_pd(r, r);
    let r4 = _mm512_mul_pd(r2, r2);
    let r8 = _mm512_mul_pd(r4, r4);
    let q01 = _mm512_fmadd_pd(r, c(Q[1]), c(Q[0]));
    let q23 = _mm512_fmadd_pd(r, c(Q[3]), c(Q[2]));
    let q45 = _mm512_fmadd_pd(r, c(Q[5]), c(Q[4]));
    let q67 = _mm512_fmadd_pd(r, c(Q[7]), c(Q[6]));
    let q89 = _mm512_fmadd_pd(r, c(Q[9]), c(Q[8]));
    let q1011 = _mm512_fmadd_pd(r, c(Q[11]), c(Q[10]));
    let q03 = _mm512_fmadd_pd(r2, q23, q01);
    let q47 = _mm512_fmadd_pd(r2, q67, q45);
    let q811 = _mm512_fmadd_pd(r2, q1011, q89);
    let q = _mm512_fmadd_pd(r8, q811, _mm512_fmadd_pd(r4, q47, q03));
    let p = _mm512_fmadd_pd(r2, q, r);
    let scale = _mm512_castsi512_pd(_mm512_slli_epi64::<52>(_mm512_add_epi64(
        k,
        _mm512_set1_epi64(1023),
    )));
    let y = _mm512_fmadd_pd(scale, p, _mm512_sub_pd(scale, c(1.0)));
    let lo = _mm512_cmp_pd_mask::<_CMP_LT_OQ>(x, c(EXPM1_MIN_F64));
    let hi = _mm512_cmp_pd_mask::<_CMP_GT_OQ>(x, c(EXPM1_MAX_F64));
    _mm512_mask_blend_pd(hi, _mm512_mask_blend_pd(lo, y, c(-1.0)), c(f64::INFINITY))
}

#[inline(always)]
fn expm1_row_impl(src: &[f32], out: &mut [f64]) {
    for (o, &l) in out.iter_mut().zip(src) {
        *o = expm1_f64(l as f64);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn expm1_row_avx2(src: &[f32], out: &mut [f64]) {
    use std::arch::x86_64::*;
    let mut s4 = src.chunks_exact(4);
    let mut o4 = out.chunks_exact_mut(4);
    for (sv, ov) in (&mut s4).zip(&mut o4) {
        // SAFETY: `sv` holds four f32 and `ov` four f64 (unaligned loads and stores).
        let v = _mm256_cvtps_pd(unsafe { _mm_loadu_ps(sv.as_ptr()) });
        unsafe { _mm256_storeu_pd(ov.as_mut_ptr(), expm1x4_avx2(v)) };
    }
    expm1_row_impl(s4.remainder(), o4.into_remainder());
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn expm1_row_avx512(src: &[f32], out: &mut [f64]) {
    use std::arch::x86_64::*;
    let mut s8 = src.chunks_exact(8);
    let mut o8 = out.chunks_exact_mut(8);
    for (sv, ov) in (&mut s8).zip(&mut o8) {
        // SAFETY: `sv` holds eight f32 and `ov` eight f64 (unaligned loads and stores).
        let v = _mm512_cvtps_pd(unsafe { _mm256_loadu_ps(sv.as_ptr()) });
        unsafe { _mm512_storeu_pd(ov.as_mut_ptr(), expm1x8_avx512(v)) };
    }
    expm1_row_impl(s8.remainder(), o8.into_remainder());
}

/// `out[y] = expm1_f64(src[y] as f64)` (bit-identical on every CPU: AVX-512F, AVX2 + FMA or the
/// portable loop, chosen at run time). `out` must have `src.len()` entries.
pub fn expm1_row(src: &[f32], out: &mut [f64]) {
    debug_assert_eq!(src.len(), out.len());
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F, hence AVX2 and FMA (checked just above).
            return unsafe { expm1_row_avx512(src, out) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            return unsafe { expm1_row_avx2(src, out) };
        }
    }
    expm1_row_impl(src, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in ulps between two finite f64 of the same sign (0 when equal).
    fn ulps(a: f64, b: f64) -> u64 {
        if a == b {
            return 0;
        }
        assert_eq!(a.is_sign_negative(), b.is_sign_negative(), "{a} {b}");
        a.to_bits().abs_diff(b.to_bits())
    }

    #[test]
    fn expm1_f64_is_within_2_ulp_of_std() {
        // Dense grids: [-40, 709] at 1e-4 (7.5 million points), [-1, 1] at 5e-7 (the cancellation
        // region), every f32 near 0, and the reduction boundaries (k ln2 +- ln2 / 2).
        let mut worst = 0;
        let mut check = |x: f64| {
            let (got, want) = (expm1_f64(x), x.exp_m1());
            let u = ulps(got, want);
            assert!(u <= 2, "expm1({x:e}) = {got:e}, std {want:e} ({u} ulp)");
            worst = worst.max(u);
        };
        for j in 0..=7_490_000 {
            check(-40.0 + j as f64 * 1e-4);
        }
        for j in -2_000_000..=2_000_000 {
            check(j as f64 * 5e-7);
        }
        let mut x = 1e-30f32;
        while x < 1e-3 {
            check(x as f64);
            check(-x as f64);
            x *= 1.001;
        }
        for k in -58..=1022 {
            let b = (k as f64 + 0.5) * std::f64::consts::LN_2;
            for d in [-1e-12, 0.0, 1e-12] {
                if (EXPM1_MIN_F64..=EXPM1_MAX_F64).contains(&(b + d)) {
                    check(b + d);
                }
            }
        }
        eprintln!("worst error: {worst} ulp");
    }

    #[test]
    fn expm1_f64_special_values() {
        assert_eq!(expm1_f64(0.0).to_bits(), 0f64.to_bits());
        assert_eq!(expm1_f64(-0.0).to_bits(), 0f64.to_bits()); // +0 (std: -0), a weight either way
        for x in [-40.000001, -100.0, -1e300, f64::NEG_INFINITY] {
            assert_eq!(expm1_f64(x), -1.0, "{x}");
        }
        for x in [709.000001, 1e300, f64::INFINITY] {
            assert_eq!(expm1_f64(x), f64::INFINITY, "{x}");
        }
        assert!(expm1_f64(f64::NAN).is_nan());
        assert!(expm1_f64(EXPM1_MAX_F64).is_finite());
        assert_eq!(expm1_f64(EXPM1_MIN_F64), EXPM1_MIN_F64.exp_m1()); // -1, correctly rounded
    }

    #[test]
    fn expm1_row_paths_are_bit_identical_to_the_portable_loop() {
        // Each build this CPU has (AVX-512F, AVX2 + FMA, dispatched) against the portable loop, over
        // every f32 on a coarse grid of bit patterns (all signs, exponents and specials) and a dense grid
        // of the step's range, with lengths that leave 0..7 entries after the vectors.
        type Pass = fn(&[f32], &mut [f64]);
        let mut passes: Vec<(&str, Pass)> = vec![("dispatched", expm1_row)];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                // SAFETY: the CPU supports AVX2 and FMA (checked just above).
                passes.push(("avx2", |s, o| unsafe { expm1_row_avx2(s, o) }));
            }
            if is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU supports AVX-512F (checked just above).
                passes.push(("avx512", |s, o| unsafe { expm1_row_avx512(s, o) }));
            }
        }
        eprintln!(
            "expm1 builds tested: {:?}",
            passes.iter().map(|p| p.0).collect::<Vec<_>>()
        );
        let mut src: Vec<f32> = (0..=u32::MAX / 4099)
            .map(|j| f32::from_bits(j * 4099))
            .collect();
        src.extend((0..400_000).map(|j| -60.0 + j as f32 * 2e-3));
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for cut in 0..8 {
            let s = &src[..src.len() - cut];
            let mut want = vec![0f64; s.len()];
            expm1_row_impl(s, &mut want);
            for (name, pass) in &passes {
                let mut got = vec![f64::NAN; s.len()];
                pass(s, &mut got);
                // NaN inputs give NaN on every path; their payloads are not compared.
                let keep = |v: &[f64]| {
                    v.iter()
                        .zip(s)
                        .map(|(&y, l)| if l.is_nan() { f64::NAN } else { y })
                        .collect::<Vec<_>>()
                };
                assert!(got.iter().zip(s).all(|(g, l)| !l.is_nan() || g.is_nan()));
                assert_eq!(bits(&keep(&got)), bits(&keep(&want)), "{name} cut {cut}");
            }
        }
    }
}
