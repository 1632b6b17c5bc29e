//! Counter-based randomness: every (seed, step, sequence, position) owns its own stream, so a result does
//! not depend on the number of threads, on the order rows are visited, or on how a batch is split
//! (sequence index = `seq_offset + b`).
//!
//! The key is hashed by chaining the SplitMix64 finaliser (Steele, Lea, Flood, "Fast splittable
//! pseudorandom number generators", OOPSLA 2014; constants of Stafford's "Mix13"), which is a bijection
//! of u64: for a fixed prefix, distinct last components give distinct states. The stream from that state
//! is SplitMix64 (a Weyl sequence through the same finaliser), which passes BigCrush.

/// The SplitMix64 / Stafford Mix13 finaliser: a bijective avalanche of 64 bits.
#[inline(always)]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The golden-ratio increment of SplitMix64.
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// Which kernel a stream belongs to (mixed into the key). Only the reverse steps draw from these
/// streams: the forward corruption uses the torch twin's keyed uniforms (`keyed.rs`). The value 1 was the
/// corruption's before it moved there; `Step` keeps 2 so that its streams are unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Domain {
    Step = 2,
}

/// The key of one kernel call: the seed, the step counter and the index of the first sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RngKey {
    pub seed: u64,
    pub step: u64,
    pub seq_offset: u64,
}

impl RngKey {
    pub fn new(seed: u64, step: u64, seq_offset: u64) -> Self {
        Self {
            seed,
            step,
            seq_offset,
        }
    }

    /// The stream of row `b` (batch index within this call) and position `i`.
    #[inline]
    pub fn stream(&self, domain: Domain, b: usize, i: usize) -> Rng {
        self.row(domain, b).stream(i)
    }

    /// The key of row `b`: the hash prefix (seed, domain, step, sequence) shared by the row's positions,
    /// so that a kernel walking a row hashes it once and each position once (the same streams as
    /// [`RngKey::stream`]).
    #[inline]
    pub fn row(&self, domain: Domain, b: usize) -> RowKey {
        let seq = self.seq_offset.wrapping_add(b as u64);
        let mut h = mix64(self.seed ^ (domain as u64).wrapping_mul(0xd1b5_4a32_d192_ed03));
        h = mix64(h ^ self.step.wrapping_mul(GOLDEN));
        h = mix64(h ^ seq.wrapping_mul(0x8cb9_2ba7_2f3d_8dd7));
        RowKey { prefix: h }
    }
}

/// The hashed key of one row (see [`RngKey::row`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowKey {
    prefix: u64,
}

impl RowKey {
    /// The stream of position `i` of this row.
    #[inline]
    pub fn stream(&self, i: usize) -> Rng {
        Rng {
            state: mix64(self.prefix ^ (i as u64).wrapping_mul(0xaef1_7502_108e_f2d9)),
        }
    }
}

/// A SplitMix64 stream.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        mix64(self.state)
    }

    /// A uniform double in [0, 1) with 53 random bits (every multiple of 2^-53 equally likely).
    #[inline]
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Chi-square statistic of observed counts against equal expected counts.
    fn chi2_uniform(counts: &[u64]) -> f64 {
        let n: u64 = counts.iter().sum();
        let e = n as f64 / counts.len() as f64;
        counts.iter().map(|&c| (c as f64 - e).powi(2) / e).sum()
    }

    #[test]
    fn uniform_is_in_unit_interval_and_uniform() {
        // 64 bins, 2^16 draws from distinct keys: chi2 with 63 dof; P(chi2 > 120) < 1e-5.
        let key = RngKey::new(7, 3, 0);
        let mut counts = [0u64; 64];
        for i in 0..(1 << 16) {
            let u = key.stream(Domain::Step, i % 97, i).uniform();
            assert!((0.0..1.0).contains(&u));
            counts[(u * 64.0) as usize] += 1;
        }
        assert!(
            chi2_uniform(&counts) < 120.0,
            "chi2 = {}",
            chi2_uniform(&counts)
        );
    }

    #[test]
    fn neighbouring_keys_are_uncorrelated() {
        // The first bit of the streams of adjacent positions, sequences and steps agrees half the time.
        let mut agree = [0u32; 3];
        let n = 20_000;
        for i in 0..n {
            let k = RngKey::new(42, 5, 0);
            let a = k.stream(Domain::Step, 3, i).next_u64() >> 63;
            let nb = [
                k.stream(Domain::Step, 3, i + 1).next_u64() >> 63,
                k.stream(Domain::Step, 4, i).next_u64() >> 63,
                RngKey::new(42, 6, 0).stream(Domain::Step, 3, i).next_u64() >> 63,
            ];
            for (c, v) in agree.iter_mut().zip(nb) {
                *c += (a == v) as u32;
            }
        }
        // Binomial(20000, 1/2): sd 70.7; 5 sd = 354.
        for c in agree {
            assert!((c as i64 - n as i64 / 2).abs() < 354, "agreements {c}");
        }
    }

    /// The key chain written out in full: four chained hashes per position.
    fn stream_reference(key: &RngKey, domain: Domain, b: usize, i: usize) -> super::Rng {
        let seq = key.seq_offset.wrapping_add(b as u64);
        let mut h = mix64(key.seed ^ (domain as u64).wrapping_mul(0xd1b5_4a32_d192_ed03));
        h = mix64(h ^ key.step.wrapping_mul(GOLDEN));
        h = mix64(h ^ seq.wrapping_mul(0x8cb9_2ba7_2f3d_8dd7));
        h = mix64(h ^ (i as u64).wrapping_mul(0xaef1_7502_108e_f2d9));
        super::Rng { state: h }
    }

    #[test]
    fn row_keys_give_the_streams_of_the_full_key_chain() {
        let key = RngKey::new(17, 4, 1000);
        for b in [0usize, 1, 77] {
            let row = key.row(Domain::Step, b);
            for i in [0usize, 1, 2, 1023, 1 << 40] {
                let (mut a, mut r) = (row.stream(i), stream_reference(&key, Domain::Step, b, i));
                assert_eq!(
                    key.stream(Domain::Step, b, i).next_u64(),
                    r.clone().next_u64()
                );
                for _ in 0..50 {
                    assert_eq!(a.next_u64(), r.next_u64());
                }
            }
        }
    }

    proptest! {
        #[test]
        fn seq_offset_is_additive(seed: u64, step: u64, off in 0u64..1_000_000, b in 0usize..1000, i in 0usize..1000) {
            // Row b of a call with seq_offset `off` is row off + b of a call with seq_offset 0.
            let a = RngKey::new(seed, step, off).stream(Domain::Step, b, i).next_u64();
            let c = RngKey::new(seed, step, 0).stream(Domain::Step, b + off as usize, i).next_u64();
            prop_assert_eq!(a, c);
        }
    }
}
