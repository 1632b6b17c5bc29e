//! exp in f32 on the shifted range of a row's log-scores: a portable function, its AVX2 + FMA twin on
//! eight lanes and its AVX-512F twin on sixteen, bit-identical to it (the same operations in the same order).

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
/// `ROUND_MAGIC_F32`), a degree-5 polynomial of exp(r) (`EXP_C1`..`EXP_C5`, truncation 9.5e-8
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
pub(super) fn exp8_avx2(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
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

/// [`exp_f32`] on sixteen lanes with AVX-512F intrinsics: the same operations in the same order as
/// [`exp_f32`] and `exp8_avx2`, so bit-identical to both (the underflow select is a zero-masked multiply).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) fn exp16_avx512(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let magic = _mm512_set1_ps(ROUND_MAGIC_F32);
    let t = _mm512_fmadd_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E), magic);
    let kf = _mm512_sub_ps(t, magic);
    let k = _mm512_sub_epi32(_mm512_castps_si512(t), _mm512_castps_si512(magic));
    let r = _mm512_fmadd_ps(kf, _mm512_set1_ps(-LN2_HI_F32), x);
    let r = _mm512_fmadd_ps(kf, _mm512_set1_ps(-LN2_LO_F32), r);
    let r2 = _mm512_mul_ps(r, r);
    let a0 = _mm512_fmadd_ps(r, _mm512_set1_ps(EXP_C1), _mm512_set1_ps(1.0));
    let a1 = _mm512_fmadd_ps(r, _mm512_set1_ps(EXP_C3), _mm512_set1_ps(EXP_C2));
    let a2 = _mm512_fmadd_ps(r, _mm512_set1_ps(EXP_C5), _mm512_set1_ps(EXP_C4));
    let p = _mm512_fmadd_ps(_mm512_fmadd_ps(a2, r2, a1), r2, a0);
    let scale = _mm512_slli_epi32::<23>(_mm512_add_epi32(k, _mm512_set1_epi32(127)));
    // x < EXP_MIN_F32 (false for NaN) gives 0: the other lanes keep p * 2^k (a zero-masked multiply).
    let keep = _mm512_cmp_ps_mask::<_CMP_NLT_UQ>(x, _mm512_set1_ps(EXP_MIN_F32));
    _mm512_maskz_mul_ps(keep, p, _mm512_castsi512_ps(scale))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::categorical::tests::rel_err;

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
    #[cfg(target_arch = "x86_64")]
    fn simd_exps_are_bit_identical_to_exp_f32() {
        // The AVX2 (eight lanes) and AVX-512 (sixteen) twins against the scalar function on a dense
        // grid over [-100, 100] (beyond both ends of the specified range) and on special values.
        use std::arch::x86_64::*;
        let mut xs: Vec<f32> = (0..=2_000_000).map(|j| -100.0 + j as f32 * 1e-4).collect();
        xs.extend([
            0.0,
            -0.0,
            EXP_MIN_F32,
            EXP_MAX_F32,
            -87.34,
            f32::MIN,
            f32::MAX,
            f32::NEG_INFINITY,
            f32::INFINITY,
            f32::NAN,
            1e-30,
            -1e-30,
        ]);
        while !xs.len().is_multiple_of(16) {
            xs.push(-1.0);
        }
        let want: Vec<u32> = xs.iter().map(|&x| exp_f32(x).to_bits()).collect();
        let nan_or_bits =
            |v: f32, w: u32| v.is_nan() && f32::from_bits(w).is_nan() || v.to_bits() == w;
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            let mut got = [0f32; 8];
            for (c, w) in xs.chunks_exact(8).zip(want.chunks_exact(8)) {
                // SAFETY: the CPU supports AVX2 and FMA (checked above); `c` and `got` hold eight f32.
                unsafe {
                    _mm256_storeu_ps(got.as_mut_ptr(), exp8_avx2(_mm256_loadu_ps(c.as_ptr())))
                };
                for j in 0..8 {
                    assert!(nan_or_bits(got[j], w[j]), "avx2 at {}", c[j]);
                }
            }
        }
        if is_x86_feature_detected!("avx512f") {
            let mut got = [0f32; 16];
            for (c, w) in xs.chunks_exact(16).zip(want.chunks_exact(16)) {
                // SAFETY: the CPU supports AVX-512F (checked above); `c` and `got` hold sixteen f32.
                unsafe {
                    _mm512_storeu_ps(got.as_mut_ptr(), exp16_avx512(_mm512_loadu_ps(c.as_ptr())))
                };
                for j in 0..16 {
                    assert!(nan_or_bits(got[j], w[j]), "avx512 at {}", c[j]);
                }
            }
        }
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
}
