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
//! Tweedie weights without cancellation, by the plain step's exact path (`steps::Tweedie::weights`).
//!
//! A [`Transform`] is a [`MoveLaw`]: the step runs on the one batch driver of `steps.rs`.

use std::cmp::Ordering;

use crate::categorical::{checked_max, draw, draw_blocks, exp_weight_blocks, exp_weights};
use crate::error::KernelError;
use crate::graphs::Graph;
use crate::rng::{Rng, RngKey};
use crate::steps::{drive, Jump, MoveLaw, Position, Scratch, StepKind, Tweedie};

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
    pub(crate) fn truncates(&self, n: usize) -> bool {
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

impl MoveLaw for Transform {
    fn check(&self) -> Result<(), KernelError> {
        Transform::new(self.temperature, self.top_k, self.top_p).map(|_| ())
    }

    /// The transformed move law of a jump step: w_y = exp((l_y - m) / T) over y != x, truncated.
    fn jump(
        &self,
        law: Jump,
        p: Position<'_>,
        rng: &mut Rng,
        scratch: &mut Scratch,
    ) -> Result<i64, KernelError> {
        let Position { row, cur, x, at } = p;
        let m = checked_max(row, cur, at)? as f64;
        if m == f64::NEG_INFINITY {
            return law.nowhere(x, at);
        }
        // S' = sum_{y != x} exp(l_y - m) >= 1; r = c e^m S' is the mass that leaves x.
        let inv_t = 1.0 / self.temperature;
        let (w, bs, rank) = scratch.weights(row.len());
        if cur.is_none() && !self.truncates(row.len()) {
            // Absorbing at MASK, temperature only: tempered weights with block sums in one pass,
            // then a draw that reads the block sums and one block (as the plain kernel).
            let s = exp_weight_blocks(row, m, inv_t, !law.c.is_infinite(), w, bs);
            if Jump::stays(law.leaving(m, s), rng) {
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
        if Jump::stays(law.leaving(m, s), rng) {
            return Ok(x);
        }
        Ok(draw_move(w, self, rank, rng.uniform()).map_or(x, |y| y as i64))
    }

    /// The transformed move law of the uniform Tweedie step: the clipped f64 move weights, tempered
    /// relative to the largest, truncated.
    fn tweedie(
        &self,
        law: Tweedie,
        p: Position<'_>,
        rng: &mut Rng,
        scratch: &mut Scratch,
    ) -> Result<i64, KernelError> {
        let Position { row, cur, x, at } = p;
        let shift = (checked_max(row, cur, at)? as f64).max(0.0);
        let xu = x as usize;
        let (w, _, rank) = scratch.weights(row.len());
        let (add, stay) = law.weights(row, xu, shift, w);
        let w_stay = law.stay_weight(stay);
        let scale = law.q / law.n;
        let mut moved = 0.0;
        let mut top: f64 = 0.0;
        for (y, wy) in w.iter_mut().enumerate() {
            *wy = if y == xu {
                0.0
            } else {
                (*wy + add).max(0.0) * scale
            };
            moved += *wy;
            top = top.max(*wy);
        }
        let total = w_stay + moved;
        if !(total > 0.0 && total.is_finite()) || rng.uniform() * total < w_stay {
            return Ok(x);
        }
        if self.temperature != 1.0 {
            let inv_t = 1.0 / self.temperature;
            for wy in w.iter_mut() {
                *wy = if *wy > 0.0 {
                    ((*wy / top).ln() * inv_t).exp()
                } else {
                    0.0
                };
            }
        }
        let u = rng.uniform();
        Ok(draw_move(w, self, rank, u).map_or(x, |y| y as i64))
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
    drive(kind, graph, x, log_score, level, len, key, &tf, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::categorical::tests::chi2;
    use crate::graphs::test_graph;
    use crate::rng::Domain;
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
        match (g.is_absorbing(), kind) {
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
            let g = test_graph(absorbing, n);
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
            let g = test_graph(absorbing, n);
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
