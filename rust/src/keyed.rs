//! Counter-based uniforms bit-identical to the torch twin, `ddm._rng.uniforms`: the forward
//! corruption draws these, so that the Rust kernel and the torch paths (`Sampler.add_noise`, the keyed
//! training loss) corrupt a sequence into exactly the same tokens.
//!
//! The key is (seed, stream, step, sequence, position), with a 32-bit stream tag. The hash is Chris
//! Wellons' `lowbias32` finaliser run as two 32-bit lanes: the seed seeds both lanes and is absorbed
//! again word by word (high, low), then the stream tag, the low 32 bits of the step, of the sequence
//! index and of the position, each word into both lanes (the second lane sees `word + LANE_B`). A last
//! cross of the lanes gives 21 + 32 = 53 bits, one f64 uniform in [0, 1). Written exactly as in
//! `_rng.py` (which keeps every value in [0, 2^32) inside int64 tensors); a change to one is a change to
//! both, and `tests/test_parity.py` compares the tokens bit for bit.

/// Lane constants (the fractional parts of sqrt 2 and sqrt 3), as in `_rng.py`.
const LANE_A: u32 = 0x6a09_e667;
const LANE_B: u32 = 0xbb67_ae85;

/// Wellons' `lowbias32` finaliser: a bijection of u32 with full avalanche (`_rng.mix32`).
#[inline(always)]
pub fn mix32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^ (x >> 16)
}

/// One 32-bit key word into both lanes (`_rng._absorb`).
#[inline(always)]
fn absorb((a, b): (u32, u32), word: u32) -> (u32, u32) {
    (mix32(a ^ word), mix32(b ^ word.wrapping_add(LANE_B)))
}

/// The key of one kernel call: row `b` of the call is sequence `seq_offset + b`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterKey {
    pub seed: u64,
    /// The stream tag that separates the uses of one seed (`_rng.STREAM_*`, the training streams).
    pub stream: u32,
    pub step: u64,
    pub seq_offset: u64,
}

impl CounterKey {
    pub fn new(seed: u64, stream: u32, step: u64, seq_offset: u64) -> Self {
        Self {
            seed,
            stream,
            step,
            seq_offset,
        }
    }

    /// The lanes of row `b` after everything but the position (hashed once per row).
    #[inline]
    pub fn row(&self, b: usize) -> CounterRow {
        let seq = self.seq_offset.wrapping_add(b as u64);
        let (hi, lo) = ((self.seed >> 32) as u32, self.seed as u32);
        let mut s = (mix32(LANE_A ^ lo), mix32(LANE_B ^ hi));
        s = absorb(s, hi);
        s = absorb(s, lo);
        s = absorb(s, self.stream);
        // the step and the sequence index with all 64 bits, high word first (as `_rng.uniforms`)
        s = absorb(s, (self.step >> 32) as u32);
        s = absorb(s, self.step as u32);
        s = absorb(s, (seq >> 32) as u32);
        s = absorb(s, seq as u32);
        CounterRow { lanes: s }
    }
}

/// The hashed key of one row (see [`CounterKey::row`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterRow {
    lanes: (u32, u32),
}

impl CounterRow {
    /// The uniform in [0, 1) of position `i` of this row: a multiple of 2^-53.
    #[inline]
    pub fn uniform(&self, i: usize) -> f64 {
        let (a, b) = absorb(self.lanes, i as u32);
        let hi = mix32(a ^ b); // cross the lanes, so each word depends on all 64 bits of state
        let lo = mix32(b ^ LANE_A);
        let bits = (u64::from(hi >> 11) << 32) | u64::from(lo);
        bits as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix32_matches_the_reference_values() {
        // From `_rng.mix32` (Python ints): 0 is a fixed point, and two values.
        assert_eq!(mix32(0), 0);
        assert_eq!(mix32(1), 0x6889_90c0);
        assert_eq!(mix32(0xdead_beef), 0xe628_c683);
    }

    #[test]
    fn uniforms_match_the_torch_twin() {
        // `_rng.uniforms(12345678901234567, 0x5EED0003, 7, torch.tensor([0, 5]), 3)`, printed exactly.
        let want = [
            [0.9982488519079747, 0.9380060949770328, 0.418591326272283],
            [0.740256055176765, 0.32153284223812173, 0.6903090524413511],
        ];
        let key = CounterKey::new(12_345_678_901_234_567, 0x5eed_0003, 7, 0);
        for (b, seq) in [0usize, 5].into_iter().enumerate() {
            for (i, &w) in want[b].iter().enumerate() {
                assert_eq!(key.row(seq).uniform(i), w, "seq {seq} position {i}");
            }
        }
    }

    #[test]
    fn uniforms_are_in_the_unit_interval_and_uniform() {
        // 64 bins, 2^16 draws over rows and positions: chi2 with 63 dof; P(chi2 > 120) < 1e-5.
        let key = CounterKey::new(7, 3, 5, 0);
        let mut counts = [0u64; 64];
        for b in 0..64 {
            let row = key.row(b);
            for i in 0..1024 {
                let u = row.uniform(i);
                assert!((0.0..1.0).contains(&u));
                counts[(u * 64.0) as usize] += 1;
            }
        }
        let e = (1u64 << 16) as f64 / 64.0;
        let chi2: f64 = counts.iter().map(|&c| (c as f64 - e).powi(2) / e).sum();
        assert!(chi2 < 120.0, "chi2 = {chi2}");
    }

    #[test]
    fn every_key_part_changes_the_draw() {
        let base = CounterKey::new(1 << 40, 9, 4, 2);
        let u = base.row(1).uniform(3);
        for other in [
            CounterKey::new(1, 9, 4, 2),
            CounterKey::new(1 << 40, 8, 4, 2),
            CounterKey::new(1 << 40, 9, 5, 2),
            CounterKey::new(1 << 40, 9, 4, 3),
            CounterKey::new(1 << 40, 9, 4 + (1 << 32), 2),
            CounterKey::new(1 << 40, 9, 4, 2 + (1 << 32)),
        ] {
            assert_ne!(other.row(1).uniform(3), u, "{other:?}");
        }
        assert_ne!(base.row(2).uniform(3), u);
        assert_ne!(base.row(1).uniform(4), u);
        // seq_offset is additive: row b at offset k is row b + k at offset 0.
        assert_eq!(CounterKey::new(1 << 40, 9, 4, 0).row(3).uniform(3), u);
    }
}
