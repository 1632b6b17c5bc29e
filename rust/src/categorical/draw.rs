//! The exact inverse-CDF draws: one running-sum scan ([`scan`]) behind the draw from a cached row and
//! its block sums ([`draw_blocks`]) and the draw over a list of weights ([`draw`]).

use super::{clipped, BLOCK};

/// The inverse-CDF scan of every draw: over `(weight, id)` pairs in order, skipping weights that are not
/// positive, the first id whose running sum (from `acc`) passes `target`, with the running sum before
/// it; or, when the sum ends short of the target, the last id of positive weight (`None` if none).
#[inline(always)]
fn scan(
    weights: impl Iterator<Item = (f64, usize)>,
    mut acc: f64,
    target: f64,
) -> Result<(usize, f64), Option<usize>> {
    let mut last = None;
    for (w, y) in weights {
        if w > 0.0 {
            last = Some(y);
            let next = acc + w;
            if target < next {
                return Ok((y, acc));
            }
            acc = next;
        }
    }
    Err(last)
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
    if !(total > 0.0 && total.is_finite()) {
        return None;
    }
    let target = u * total;
    match scan(block_sums.iter().copied().zip(0..), 0.0, target) {
        Ok((k, acc)) => Some(scan_block(values, k, clip, acc, target)),
        Err(last) => last.map(|k| scan_block(values, k, clip, f64::NEG_INFINITY, f64::INFINITY)),
    }
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
    let weights = values[lo..hi].iter().map(|&v| clipped(v.into(), clip));
    match scan(weights.zip(lo..), acc, target) {
        Ok((y, _)) => y,
        // The block sum was positive, so some weight in it is (a block sum is a sum of non-negative
        // terms).
        Err(last) => last.unwrap_or(hi - 1),
    }
}

/// An exact float64 inverse-CDF draw over `(weight, id)` pairs of non-negative weights, from a uniform
/// `u` in [0, 1): the first id whose running sum passes `u * total`, or the last one of positive weight
/// if rounding leaves the sum short. `None` when the total is not positive and finite.
pub fn draw(weights: impl Iterator<Item = (f64, usize)> + Clone, u: f64) -> Option<usize> {
    let total: f64 = weights.clone().map(|e| e.0).sum();
    if !(total > 0.0 && total.is_finite()) {
        return None;
    }
    match scan(weights, 0.0, u * total) {
        Ok((y, _)) => Some(y),
        Err(last) => last,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::categorical::clipped_blocks;
    use crate::categorical::tests::chi2;
    use crate::rng::{Domain, RngKey};
    use proptest::prelude::*;

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
        // The flat draw: the same rules over (weight, id) pairs.
        let flat = || values.iter().copied().zip(0..);
        assert_eq!(draw(flat(), 0.0), Some(2));
        assert_eq!(draw(flat(), 1.5), Some(4));
        assert_eq!(draw(zeros.iter().copied().zip(0..), 0.3), None);
        assert_eq!(draw([(f64::NAN, 0)].into_iter(), 0.3), None);
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
            // Both draws agree with a direct scan of the running sum (the flat one bit for bit).
            let total: f64 = w.iter().sum();
            let mut acc = 0.0;
            let direct = w.iter().position(|&v| { acc += v; v > 0.0 && u * total < acc });
            let last = w.iter().rposition(|&v| v > 0.0);
            prop_assert_eq!(draw(w.iter().copied().zip(0..), u), direct.or(last));
        }
    }
}
