//! The reverse steps of SEDD sampling (Lou, Meng, Ermon 2024, section 4.1; docs/math.md section 5): Euler,
//! analytic (Tweedie tau-leaping) and denoise, for both graphs, fused over each row.
//!
//! Each position (b, i) moves independently. With s_y = exp(l_y) the score (the entry at the current
//! token x is ignored and s_x := 1), every step's law on one position is one of two shapes:
//!
//! * **Jump** (absorbing Euler / analytic / denoise at MASK, uniform Euler): stay at x with probability
//!   max(0, 1 - r), r = c S, S = sum_{y != x} s_y, else move to y != x with probability proportional
//!   to s_y. Absorbing: c = rate_dt (Euler), c = e^d - 1 (analytic: probs_y = (e^d - 1) s_y and
//!   probs_MASK = 1 - (e^d - 1) S), c = inf (denoise drops MASK, so y ~ s_y). Uniform Euler:
//!   c = rate_dt / N (Q(x, y) = 1/N). Clipping at 0 and renormalising is exactly `max(0, .)` here.
//! * **Tweedie** (uniform analytic / denoise): probs_y = [exp(-dQ) s]_y exp(dQ)(x, y), where
//!   [exp(-dQ) s]_y = e^d s_y + (1 - e^d) S_all / N (S_all = S + 1) and
//!   exp(dQ)(x, y) = e^{-d} [y = x] + (1 - e^{-d}) / N. Dividing every entry by e^d (which changes
//!   neither the signs nor the normalised law) and writing q = 1 - e^{-d}, T = q S_all / N:
//!   weight_y = max(0, s_y - T) q / N for y != x and weight_x = max(0, 1 - T) (e^{-d} + q / N):
//!   finite for every d, clipped at 0, then normalised.
//!
//! Cost: a row that can change is read from memory once (absorbing: only MASK rows are read at all;
//! a NaN in a row that is never read is ignored) by one fused pass, which writes exp(l - m) with a
//! shift m near the row maximum (guessed from the first block, checked by the pass) into a per-thread
//! f32 cache of O(dim) with f64 block sums (`categorical::exp_blocks_f32`); the constants of
//! the law are scaled by e^{-m} instead of the scores (in f64, or in logs where e^m could overflow), so
//! every finite f32 log-score is handled without a slow path. Jump decides "stay" from r, then draws
//! from the block sums and one block; Tweedie first tries exact rejection sampling from the unclipped
//! weights and makes one more pass over the cache for the clipped block sums only when that fails.
//!
//! One kernel: [`drive`] runs a step over a batch, generic over how a position draws its move given the
//! law ([`MoveLaw`]). The plain step is [`Identity`], the fast path above; a
//! [`Transform`](crate::proposal::Transform) (temperature, top-k, top-p) is the other [`MoveLaw`].
//! Every position goes through the one [`step_position`].

use rayon::prelude::*;

use crate::categorical::{
    affine_clipped_blocks, checked_max, clipped_blocks, draw_blocks, exp_blocks_f32, expm1_row,
    max_check, refresh_block, sum_lanes_f64, BLOCK,
};
use crate::error::KernelError;
use crate::graphs::{check_levels, check_tokens_shape, Graph};
use crate::rng::{Domain, Rng, RngKey};

/// Which reverse step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    /// Euler with `rate_dt = sigma(t_k) * dt`.
    Euler,
    /// Analytic (Tweedie tau-leaping) with `dsigma = sigma_bar(t_k) - sigma_bar(t_{k+1})`.
    Analytic,
    /// Denoise: analytic with all remaining noise `sigma = sigma_bar(eps)`; absorbing drops MASK.
    Denoise,
}

impl StepKind {
    /// Every step kind, in the order of [`StepKind::name`]'s list.
    pub const ALL: [StepKind; 3] = [StepKind::Euler, StepKind::Analytic, StepKind::Denoise];

    /// The step's name across the Python boundary: `"euler"`, `"analytic"` or `"denoise"`.
    pub fn name(self) -> &'static str {
        match self {
            StepKind::Euler => "euler",
            StepKind::Analytic => "analytic",
            StepKind::Denoise => "denoise",
        }
    }

    /// The step called `name` (see [`StepKind::name`]); a `Value` error naming `kind` otherwise.
    pub fn from_name(name: &str) -> Result<Self, KernelError> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .ok_or_else(|| KernelError::Value {
                arg: "kind",
                msg: format!("must be one of 'euler', 'analytic', 'denoise', got {name:?}"),
            })
    }

    /// The name of the noise-level argument of this step.
    pub fn level_arg(self) -> &'static str {
        match self {
            StepKind::Euler => "rate_dt",
            StepKind::Analytic => "dsigma",
            StepKind::Denoise => "sigma",
        }
    }
}

/// Proposals of the uniform analytic / denoise step's rejection sampler before the exact clip pass.
const REJECTION_TRIES: usize = 4;

/// The uniform Tweedie step uses its f32 cache only when the law's total weight is provably above
/// 1 / PRECISE_RATIO of the unclipped weight, so the cache's rounding moves the law by at most
/// ~PRECISE_RATIO * 2.5e-7 in total variation; otherwise it takes the exact f64 path.
const PRECISE_RATIO: f64 = 8.0;

/// The law of one sequence's positions, fixed by the graph, the step and its noise level.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Law {
    /// Every position keeps its token (zero noise step).
    Stay,
    /// Stay with probability max(0, 1 - c S), else move proportionally to s_y.
    Jump(Jump),
    /// The uniform analytic step.
    Tweedie(Tweedie),
}

/// The constants of a jump law: `c` and `ln_c = ln c` (both +inf for the absorbing denoising step).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Jump {
    pub(crate) c: f64,
    pub(crate) ln_c: f64,
}

impl Jump {
    /// r = c S = c e^m S', the probability mass that leaves x (>= 1 means x is clipped to 0), from the
    /// shift m and the shifted sum S' > 0: directly while e^m is a normal f64, in logs beyond; +inf for
    /// c = +inf.
    pub(crate) fn leaving(self, m: f64, s: f64) -> f64 {
        if self.c.is_infinite() {
            f64::INFINITY
        } else if m.abs() < 700.0 {
            self.c * m.exp() * s
        } else {
            (self.ln_c + m + s.ln()).exp()
        }
    }

    /// Whether the position stays at its token, given r = [`Jump::leaving`]: with probability 1 - r
    /// when r < 1 (one uniform drawn then).
    pub(crate) fn stays(r: f64, rng: &mut Rng) -> bool {
        r < 1.0 && rng.uniform() < 1.0 - r
    }

    /// A position where every state but x has log-score -inf: it stays, except that the absorbing
    /// denoising step must leave MASK and has nowhere to go.
    pub(crate) fn nowhere(self, x: i64, at: (usize, usize)) -> Result<i64, KernelError> {
        if self.c.is_infinite() {
            Err(KernelError::NoMass { b: at.0, i: at.1 })
        } else {
            Ok(x)
        }
    }
}

/// The constants of the uniform Tweedie law: q = 1 - e^{-d}, e_neg = e^{-d}, n = N.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tweedie {
    pub(crate) q: f64,
    pub(crate) e_neg: f64,
    pub(crate) n: f64,
}

impl Tweedie {
    /// The weight of staying, `max(0, stay) (e^{-d} + q / N)`, from its unclipped factor `stay`.
    pub(crate) fn stay_weight(self, stay: f64) -> f64 {
        stay.max(0.0) * (self.e_neg + self.q / self.n)
    }

    /// The law in f64 without cancellation: writes v_y into `w` (0 at `x`) and returns (add, stay), so
    /// that a move weight is max(0, v_y + add) q / N and the stay weight [`Tweedie::stay_weight`]`(stay)`.
    ///
    /// With s_y = e^{l_y}, T = q S_all / N and E = sum_{y != x} expm1(l_y): T = q + q E / N, so
    /// s_y - T = expm1(l_y) + a and 1 - T = a with a = e^{-d} - q E / N: v_y = expm1(l_y) and
    /// add = stay = a, each term to f64 relative accuracy from the f32 log-scores, so a weight of order
    /// e^{-d} keeps its digits however close every score is to 1. Where a log-score could overflow f64
    /// (`shift` > 600, `shift` at least the largest log-score other than x's), the shifted form
    /// v_y = exp(l_y - m), add = -T e^{-m}, stay = e^{-m} - T e^{-m} is used instead (relative accuracy
    /// 1e-16, ample there). Two passes over the row: the vectorised `expm1_row` (within 2 ulp of std's
    /// expm1) and the sum E in eight lanes.
    pub(crate) fn weights(self, row: &[f32], x: usize, shift: f64, w: &mut [f64]) -> (f64, f64) {
        let Tweedie { q, e_neg, n } = self;
        if shift <= 600.0 {
            expm1_row(row, w);
            w[x] = 0.0; // the current token's entry is ignored (it may be NaN)
            let e = sum_lanes_f64(w);
            let a = e_neg - q * e / n; // 1 - T
            (a, a)
        } else {
            let mut sum = 0.0;
            for (y, (wy, &l)) in w.iter_mut().zip(row).enumerate() {
                *wy = if y == x {
                    0.0
                } else {
                    (l as f64 - shift).exp()
                };
                sum += *wy;
            }
            let one = (-shift).exp();
            let t = q * (one + sum) / n; // T e^{-m}
            (-t, one - t)
        }
    }
}

/// ln(e^d - 1) for d > 0, without overflow for large d.
fn ln_expm1(d: f64) -> f64 {
    if d > 30.0 {
        d + (-(-d).exp()).ln_1p()
    } else {
        d.exp_m1().ln()
    }
}

/// The constants of the law of `kind` at noise level `level`.
pub(crate) fn law(graph: Graph, kind: StepKind, level: f64) -> Law {
    let n = graph.vocab_size as f64;
    match (graph.is_absorbing(), kind) {
        (true, StepKind::Denoise) => Law::Jump(Jump {
            c: f64::INFINITY,
            ln_c: f64::INFINITY,
        }),
        _ if level == 0.0 => Law::Stay,
        (true, StepKind::Euler) => Law::Jump(Jump {
            c: level,
            ln_c: level.ln(),
        }),
        (true, StepKind::Analytic) => Law::Jump(Jump {
            c: level.exp_m1(),
            ln_c: ln_expm1(level),
        }),
        (false, StepKind::Euler) => Law::Jump(Jump {
            c: level / n,
            ln_c: level.ln() - n.ln(),
        }),
        (false, StepKind::Analytic | StepKind::Denoise) => Law::Tweedie(Tweedie {
            q: -(-level).exp_m1(),
            e_neg: (-level).exp(),
            n,
        }),
    }
}

/// Per-thread scratch of every kernel, grown on first use: the f32 cache of one row, the block sums (of
/// the cache or of `w`), f64 weights and the ranked states of a truncated law.
#[derive(Default)]
pub(crate) struct Scratch {
    cache: Vec<f32>,
    block_sums: Vec<f64>,
    w: Vec<f64>,
    rank: Vec<(f64, u32)>,
}

impl Scratch {
    /// The f32 cache and its block sums for a row of `width` states.
    fn cache(&mut self, width: usize) -> (&mut [f32], &mut [f64]) {
        if self.cache.len() < width {
            self.cache.resize(width, 0.0);
        }
        (
            &mut self.cache[..width],
            Self::fit(&mut self.block_sums, width),
        )
    }

    /// f64 weights and their block sums for a row of `width` states, and the ranking buffer.
    pub(crate) fn weights(
        &mut self,
        width: usize,
    ) -> (&mut [f64], &mut [f64], &mut Vec<(f64, u32)>) {
        if self.w.len() < width {
            self.w.resize(width, 0.0);
        }
        let bs = Self::fit(&mut self.block_sums, width);
        (&mut self.w[..width], bs, &mut self.rank)
    }

    fn fit(block_sums: &mut Vec<f64>, width: usize) -> &mut [f64] {
        let nb = width.div_ceil(BLOCK);
        if block_sums.len() < nb {
            block_sums.resize(nb, 0.0);
        }
        &mut block_sums[..nb]
    }
}

/// One position of a step: the row it reads (absorbing: the N real ids), the ignored current token's
/// index in it (`None` at MASK), the current token and the position (b, i) for errors.
#[derive(Clone, Copy)]
pub(crate) struct Position<'a> {
    pub(crate) row: &'a [f32],
    pub(crate) cur: Option<usize>,
    pub(crate) x: i64,
    pub(crate) at: (usize, usize),
}

/// How a position draws its new token once the step's law is known: the per-position half of a step
/// kernel, which [`drive`] runs over the batch. [`Identity`] is the plain step.
pub(crate) trait MoveLaw: Sync {
    /// Checks the law's own options (after the batch's shapes, levels and tokens).
    fn check(&self) -> Result<(), KernelError>;

    /// The new token under a jump law (the row has at least one state other than x).
    fn jump(
        &self,
        law: Jump,
        p: Position<'_>,
        rng: &mut Rng,
        scratch: &mut Scratch,
    ) -> Result<i64, KernelError>;

    /// The new token under the uniform Tweedie law (the row has at least one state other than x).
    fn tweedie(
        &self,
        law: Tweedie,
        p: Position<'_>,
        rng: &mut Rng,
        scratch: &mut Scratch,
    ) -> Result<i64, KernelError>;
}

/// The plain reverse step: the identity transform of the move law, drawn by the fused one-pass
/// kernel of the module doc.
pub(crate) struct Identity;

impl MoveLaw for Identity {
    fn check(&self) -> Result<(), KernelError> {
        Ok(())
    }

    fn jump(
        &self,
        law: Jump,
        p: Position<'_>,
        rng: &mut Rng,
        scratch: &mut Scratch,
    ) -> Result<i64, KernelError> {
        let (cache, bs) = scratch.cache(p.row.len());
        // c_y = s_y e^{-m}, S = e^m S' with S' >= 1 (the guessed maximum gives 1).
        let (s, shift) = load_row(p.row, p.cur, f32::NEG_INFINITY, cache, bs, p.at)?;
        if s <= 0.0 {
            return law.nowhere(p.x, p.at);
        }
        if Jump::stays(law.leaving(shift as f64, s), rng) {
            return Ok(p.x);
        }
        Ok(draw_blocks(cache, bs, 0.0, rng.uniform()).map_or(p.x, |y| y as i64))
    }

    fn tweedie(
        &self,
        law: Tweedie,
        p: Position<'_>,
        rng: &mut Rng,
        scratch: &mut Scratch,
    ) -> Result<i64, KernelError> {
        let Tweedie { q, n, .. } = law;
        let (row, x) = (p.row, p.x);
        let (cache, bs) = scratch.cache(row.len());
        // Shift m >= 0: s_x = 1 enters the sums too (so the flush bound holds against it);
        // c_y = s_y e^{-m}, S' = sum_{y != x} c_y, and every weight below is divided by e^m.
        let (s, shift) = load_row(row, p.cur, 0.0, cache, bs, p.at)?;
        let one = (-(shift as f64)).exp(); // s_x e^{-m}, in (0, 1] (0 only beyond m = 745)
        let t = q * (one + s) / n; // T e^{-m}
        let w_stay = law.stay_weight(one - t);
        // Exact rejection sampling of the clipped law (weights max(0, c_y - T') q / N for y != x,
        // w_stay for x) from the unclipped one (c_y q / N, and the same w_stay, whose block sums the
        // exp pass already has): stay is always accepted, a move to y with probability
        // max(0, c_y - T') / c_y. Each accepted draw follows the clipped law, so a few tries and
        // then the exact clip pass below is exact too; the clip pass is then needed only when most
        // of the move mass is clipped.
        let w_prop = w_stay + s * q / n;
        // The f32 cache holds c_y to ~2.5e-7 relative, so a weight c_y - T' is only that accurate
        // relative to c_y: the law's error in total variation is at most ~2.5e-7 w_prop / total.
        // total >= w_stay + max(0, sum_{y != x} (c_y - T')) q / N, known without a pass. When that
        // bound is below w_prop / PRECISE_RATIO (large noise steps: at high noise every score is near
        // 1 and the clipped weights are O(e^-d)), the law is recomputed in f64 without cancellation.
        let moves_lb = (s - (row.len() - 1) as f64 * t).max(0.0) * q / n;
        let cache_is_accurate = (w_stay + moves_lb) * PRECISE_RATIO >= w_prop; // false for NaN
        if !cache_is_accurate {
            return Ok(tweedie_precise(law, row, x as usize, shift, rng, scratch));
        }
        if w_prop > 0.0 && w_prop.is_finite() {
            for _ in 0..REJECTION_TRIES {
                if rng.uniform() * w_prop < w_stay {
                    return Ok(x);
                }
                let Some(y) = draw_blocks(cache, bs, 0.0, rng.uniform()) else {
                    break;
                };
                let cy = cache[y] as f64;
                if rng.uniform() * cy < cy - t {
                    return Ok(y as i64);
                }
            }
        }
        clipped_blocks(cache, t, bs);
        let moved: f64 = bs.iter().sum();
        let w_move = moved * q / n;
        let total = w_stay + w_move;
        if total.is_nan() || total <= 0.0 || rng.uniform() * total < w_stay {
            return Ok(x);
        }
        Ok(draw_blocks(cache, bs, t, rng.uniform()).map_or(x, |y| y as i64))
    }
}

/// How far the true row maximum may lie above a guessed shift before the pass is redone with the true
/// one (exp_f32 is accurate up to `EXP_MAX_F32` = 88; weights up to e^64 leave f32 and f64 ample room).
const SHIFT_SLACK: f32 = 64.0;

/// Reads `row` into the cache as c_y = exp(l_y - m) in f32 with the current token's entry set to 0 (it
/// is not a move); returns (S' = sum of the cache in f64, the shift m), or an error for a NaN or +inf
/// log-score outside `cur` (-inf is a weight of exactly 0, read in the one pass like any other).
///
/// One pass: the shift is guessed as max(`floor`, the largest log-score in the first block outside
/// `cur`), and the pass returns the true maximum; in the rare row whose maximum lies more than
/// [`SHIFT_SLACK`] above the guess, the pass is redone with max(`floor`, the maximum outside `cur`).
/// Either way m is at least the largest log-score of some state other than x (or `floor`), so every
/// weight that flushes to 0 (more than 87.3 below m) is under 1.6e-38 of the largest weight, and no
/// weight exceeds e^64.
fn load_row(
    row: &[f32],
    cur: Option<usize>,
    floor: f32,
    cache: &mut [f32],
    block_sums: &mut [f64],
    at: (usize, usize),
) -> Result<(f64, f32), KernelError> {
    let head = &row[..row.len().min(BLOCK)];
    let guess = match cur {
        Some(x) if x < head.len() => max_check(&head[..x]).0.max(max_check(&head[x + 1..]).0),
        _ => max_check(head).0,
    };
    let mut shift = if guess.is_finite() {
        guess.max(floor)
    } else {
        floor.max(0.0)
    };
    let (max, chk) = exp_blocks_f32(row, shift, cache, block_sums);
    if chk != 0.0 || max > shift + SHIFT_SLACK {
        // Slow path: a non-finite entry (allowed only at the ignored current token), or a guess too low
        // (the maximum may also be the ignored entry's).
        let m = checked_max(row, cur, at)?;
        if m > shift + SHIFT_SLACK {
            shift = m.max(floor);
            exp_blocks_f32(row, shift, cache, block_sums);
        }
    }
    if let Some(x) = cur {
        cache[x] = 0.0;
        refresh_block(cache, x, block_sums);
    }
    Ok((block_sums.iter().sum(), shift))
}

/// The uniform Tweedie step's law recomputed in f64 without cancellation ([`Tweedie::weights`]), then
/// drawn by inverse CDF: one more pass for the clipped weights and their block sums, then the block
/// draw of the f32 path (`draw_blocks`), exact in f64.
fn tweedie_precise(
    law: Tweedie,
    row: &[f32],
    x: usize,
    shift: f32,
    rng: &mut Rng,
    scratch: &mut Scratch,
) -> i64 {
    // The f32 path's block sums are not needed any more: they now hold those of the f64 weights.
    let (w, bs, _) = scratch.weights(row.len());
    let (add, stay) = law.weights(row, x, shift as f64, w);
    affine_clipped_blocks(w, add, law.q / law.n, bs);
    w[x] = law.stay_weight(stay);
    refresh_block(w, x, bs);
    draw_blocks(w, bs, 0.0, rng.uniform()).map_or(x as i64, |y| y as i64)
}

/// One position: the new token drawn from the step's law, its move drawn by `moves`.
///
/// Absorbing: only MASK moves, and its row holds the N real ids (the MASK entry is ignored); a real
/// token is returned without reading its row. Uniform: the entry at the current token is ignored.
#[allow(clippy::too_many_arguments)]
fn step_position<M: MoveLaw>(
    graph: Graph,
    law: Law,
    moves: &M,
    x: i64,
    row: &[f32],
    rng: &mut Rng,
    scratch: &mut Scratch,
    at: (usize, usize),
) -> Result<i64, KernelError> {
    let (row, cur) = match graph.mask() {
        Some(m) if x != m => return Ok(x),
        Some(_) => (&row[..graph.vocab_size], None),
        None => (row, Some(x as usize)),
    };
    if cur.is_some() && row.len() == 1 {
        return Ok(x); // no state to move to (uniform, N = 1)
    }
    let p = Position { row, cur, x, at };
    match law {
        Law::Stay => Ok(x),
        Law::Jump(j) => moves.jump(j, p, rng, scratch),
        Law::Tweedie(t) => moves.tweedie(t, p, rng, scratch),
    }
}

/// The batch driver of every step kernel: checks the arguments, fixes each sequence's law once, and
/// runs [`step_position`] with `moves` over every position in the current rayon pool, writing `out`.
///
/// `kind` picks the step and what `level` is (see [`StepKind`]): `rate_dt` (Euler), `dsigma` (analytic)
/// or `sigma` (denoise; absorbing never returns MASK). `x`: `[B, L]` int64 flattened, `log_score`:
/// `[B, L, dim]` float32 flattened, `level`: `[B]` (B = `level.len()`), `len`: L. Position (b, i) draws
/// from the stream keyed by (seed, step, seq_offset + b, i), so the result does not depend on the thread
/// count or the split of the batch. On error `out` may be partly written.
#[allow(clippy::too_many_arguments)]
pub(crate) fn drive<M: MoveLaw>(
    kind: StepKind,
    graph: Graph,
    x: &[i64],
    log_score: &[f32],
    level: &[f64],
    len: usize,
    key: RngKey,
    moves: &M,
    out: &mut [i64],
) -> Result<(), KernelError> {
    let batch = level.len();
    let n = check_tokens_shape(x, out, batch, len)?;
    let dim = graph.dim();
    if n.checked_mul(dim) != Some(log_score.len()) {
        return Err(KernelError::Shape {
            arg: "log_score",
            msg: format!(
                "has {} elements, expected B * L * dim = {batch} * {len} * {dim}",
                log_score.len()
            ),
        });
    }
    check_levels(kind.level_arg(), level)?;
    if n == 0 {
        return Ok(());
    }
    graph.check_tokens("x", x, len)?;
    moves.check()?;
    let laws: Vec<Law> = level.iter().map(|&v| law(graph, kind, v)).collect();
    out.par_iter_mut()
        .zip(x.par_iter())
        .zip(log_score.par_chunks(dim))
        .enumerate()
        .try_for_each_init(Scratch::default, |scratch, (j, ((o, &t), row))| {
            let (b, i) = (j / len, j % len);
            let mut rng = key.stream(Domain::Step, b, i);
            *o = step_position(graph, laws[b], moves, t, row, &mut rng, scratch, (b, i))?;
            Ok(())
        })
}

/// One reverse step over a batch, written into `out`: [`drive`] with the plain law ([`Identity`]); the
/// arguments are [`drive`]'s.
#[allow(clippy::too_many_arguments)]
pub fn reverse_step(
    kind: StepKind,
    graph: Graph,
    x: &[i64],
    log_score: &[f32],
    level: &[f64],
    len: usize,
    key: RngKey,
    out: &mut [i64],
) -> Result<(), KernelError> {
    drive(kind, graph, x, log_score, level, len, key, &Identity, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::categorical::tests::chi2;
    use crate::graphs::test_graph;
    use proptest::prelude::*;

    const KINDS: [StepKind; 3] = StepKind::ALL;

    /// The probabilities `[dim]` of one position's step, computed directly from the formulas of docs/math.md section 5 (not
    /// fused, std exp): the reference the fused kernel is tested against. `x` must be a state of `graph`,
    /// `row` has `dim` finite entries.
    fn step_probs(graph: Graph, kind: StepKind, x: usize, row: &[f32], level: f64) -> Vec<f64> {
        let dim = graph.dim();
        let n = graph.vocab_size as f64;
        let mut s: Vec<f64> = row.iter().map(|&v| (v as f64).exp()).collect();
        s[x] = 1.0;
        let mask = graph.mask().map(|m| m as usize);
        let mut p = vec![0.0; dim];
        if mask.is_some_and(|m| m != x) {
            p[x] = 1.0; // absorbing: a real token never changes
            return p;
        }
        // Q(x, y) for y != x: the rate y -> x (absorbing: 1 into MASK; uniform: 1/N).
        let q_in = if graph.is_absorbing() { 1.0 } else { 1.0 / n };
        let d = level;
        match kind {
            StepKind::Euler => {
                for y in (0..dim).filter(|&y| y != x) {
                    p[y] = level * q_in * s[y];
                }
                p[x] = 1.0 - p.iter().sum::<f64>();
            }
            StepKind::Analytic | StepKind::Denoise if graph.is_absorbing() => {
                for y in (0..dim).filter(|&y| y != x) {
                    p[y] = d.exp_m1() * s[y];
                }
                p[x] = 1.0 - p.iter().sum::<f64>();
                if kind == StepKind::Denoise {
                    p[x] = 0.0;
                    if d == 0.0 {
                        // The limit d -> 0 of the normalised law.
                        p.iter_mut()
                            .zip(&s)
                            .take(dim - 1)
                            .for_each(|(a, &b)| *a = b);
                    }
                }
            }
            StepKind::Analytic | StepKind::Denoise => {
                let s_all: f64 = s.iter().sum();
                for (y, py) in p.iter_mut().enumerate() {
                    let stag = d.exp() * s[y] + (1.0 - d.exp()) * s_all / n;
                    let tr = if y == x { (-d).exp() } else { 0.0 } + (1.0 - (-d).exp()) / n;
                    *py = stag * tr;
                }
            }
        }
        p.iter_mut().for_each(|v| *v = v.max(0.0));
        let tot: f64 = p.iter().sum();
        p.iter_mut().for_each(|v| *v /= tot);
        p
    }

    /// A deterministic log-score row with entries in [-lo, hi).
    fn row(dim: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
        let mut r = RngKey::new(seed, 99, 0).stream(Domain::Step, 0, 0);
        (0..dim)
            .map(|_| -lo + (lo + hi) * r.uniform() as f32)
            .collect()
    }

    /// Runs one step on `count` copies of the same (x, row) and returns the counts per state.
    fn draw_counts(
        graph: Graph,
        kind: StepKind,
        x: usize,
        r: &[f32],
        level: f64,
        count: usize,
    ) -> Vec<u64> {
        let len = 500;
        let batch = count / len;
        let xs = vec![x as i64; batch * len];
        let ls: Vec<f32> = r
            .iter()
            .copied()
            .cycle()
            .take(batch * len * r.len())
            .collect();
        let mut out = vec![-1; xs.len()];
        reverse_step(
            kind,
            graph,
            &xs,
            &ls,
            &vec![level; batch],
            len,
            RngKey::new(5, 1, 0),
            &mut out,
        )
        .unwrap();
        let mut c = vec![0u64; graph.dim()];
        for &t in &out {
            c[t as usize] += 1;
        }
        c
    }

    /// Chi-square with at most dim - 1 dof against the 1 - 1e-6 quantile (Wilson-Hilferty bound).
    fn chi2_limit(dof: usize) -> f64 {
        let k = dof.max(1) as f64;
        let z = 4.8; // upper 1e-6 normal quantile, rounded up
        k * (1.0 - 2.0 / (9.0 * k) + z * (2.0 / (9.0 * k)).sqrt()).powi(3) + 5.0
    }

    fn check_law(graph: Graph, kind: StepKind, x: usize, r: &[f32], level: f64) {
        let p = step_probs(graph, kind, x, r, level);
        let c = draw_counts(graph, kind, x, r, level, 100_000);
        let dof = p.iter().filter(|&&v| v > 0.0).count() - 1;
        let stat = chi2(&c, &p);
        assert!(
            stat < chi2_limit(dof),
            "{graph:?} {kind:?} x={x} level={level}: chi2 = {stat} with {dof} dof"
        );
    }

    #[test]
    fn draws_follow_the_step_law() {
        // Small and multi-block dims, both graphs, every step, unclipped and clipped regimes.
        for &(n, lo, hi) in &[(4usize, 3.0f32, 1.0f32), (27, 4.0, 2.0), (200, 6.0, 1.0)] {
            for absorbing in [true, false] {
                let g = test_graph(absorbing, n);
                let r = row(g.dim(), n as u64, lo, hi);
                let x = if absorbing { n } else { n / 2 };
                for kind in KINDS {
                    for level in [0.01, 0.3, 3.0] {
                        check_law(g, kind, x, &r, level);
                    }
                }
            }
        }
    }

    #[test]
    fn extreme_log_scores_use_the_rescaled_path() {
        // Scores that overflow exp (l up to 2000) or underflow it (l down to -2000) everywhere.
        for absorbing in [true, false] {
            let g = test_graph(absorbing, 30);
            let x = if absorbing { 30 } else { 4 };
            for (lo, hi) in [(-1000.0f32, 1003.0f32), (2003.0, -1000.0)] {
                let r = row(g.dim(), 7, lo, hi);
                for kind in KINDS {
                    for level in [1e-3, 0.5] {
                        let p = step_probs_rescaled(g, kind, x, &r, level);
                        let c = draw_counts(g, kind, x, &r, level, 50_000);
                        let dof = p.iter().filter(|&&v| v > 0.0).count().saturating_sub(1);
                        assert!(
                            chi2(&c, &p) < chi2_limit(dof),
                            "{g:?} {kind:?} {lo} {hi} {level}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_maximum_far_beyond_the_first_block_redoes_the_pass() {
        // The shift is guessed from the first 64 log-scores: rows whose maximum lies far above them (by
        // more than SHIFT_SLACK, in the middle or the last partial block) take the second pass, and rows
        // whose only large entry is the ignored current token's do not need it; the law is exact either
        // way.
        let dim = 150;
        for absorbing in [true, false] {
            let g = test_graph(absorbing, if absorbing { dim - 1 } else { dim });
            let x = if absorbing { dim - 1 } else { 100 };
            let mut r = row(dim, 9, 6.0, 1.0);
            r[..BLOCK].iter_mut().for_each(|v| *v -= 400.0);
            for (far, at_x) in [
                (80.0f32, false),
                (300.0, false),
                (2000.0, false),
                (500.0, true),
            ] {
                let mut r2 = r.clone();
                if at_x {
                    if absorbing {
                        continue; // the MASK entry is not in the row that is read
                    }
                    r2[x] = far;
                } else {
                    r2[120] = far;
                    r2[146] = far - 1.5;
                    r2[70] = far - 3.0;
                }
                for kind in KINDS {
                    for level in [1e-3, 0.5] {
                        let p = step_probs_rescaled(g, kind, x, &r2, level);
                        let c = draw_counts(g, kind, x, &r2, level, 50_000);
                        let dof = p.iter().filter(|&&v| v > 0.0).count().saturating_sub(1);
                        assert!(
                            chi2(&c, &p) < chi2_limit(dof),
                            "{g:?} {kind:?} far={far} at_x={at_x} level={level}"
                        );
                    }
                }
            }
        }
    }

    /// `step_probs` evaluated in log space where it matters, for rows whose exp overflows f64.
    fn step_probs_rescaled(g: Graph, kind: StepKind, x: usize, r: &[f32], level: f64) -> Vec<f64> {
        let m = r
            .iter()
            .enumerate()
            .filter(|&(y, _)| y != x)
            .map(|(_, &v)| v)
            .fold(f32::NEG_INFINITY, f32::max) as f64;
        let s: Vec<f64> = r.iter().map(|&v| (v as f64 - m).exp()).collect();
        let ssum: f64 = s
            .iter()
            .enumerate()
            .filter(|&(y, _)| y != x)
            .map(|(_, v)| v)
            .sum();
        let mut p = vec![0.0; g.dim()];
        let stay = match (g.is_absorbing(), kind) {
            (true, StepKind::Denoise) => 0.0,
            (true, _) | (false, StepKind::Euler) => {
                // Jump: r = c S in log space.
                let ln_c = match kind {
                    StepKind::Euler => {
                        level.ln()
                            - if g.is_absorbing() {
                                0.0
                            } else {
                                (g.vocab_size as f64).ln()
                            }
                    }
                    _ => ln_expm1(level),
                };
                (1.0 - (ln_c + m + ssum.ln()).exp()).max(0.0)
            }
            (false, _) => {
                // Uniform Tweedie with all scores scaled by e^{-m} when m > 0 (overflow case); in the
                // underflow case (m < 0) every s_y is far below T >= q / N, so every move is clipped.
                let (n, q) = (g.vocab_size as f64, -(-level).exp_m1());
                let m = m.max(0.0);
                let s: Vec<f64> = r.iter().map(|&v| (v as f64 - m).exp()).collect();
                let ssum: f64 = s
                    .iter()
                    .enumerate()
                    .filter(|&(y, _)| y != x)
                    .map(|(_, v)| v)
                    .sum();
                let one = (-m).exp();
                let t = q * (one + ssum) / n;
                let ws = (one - t).max(0.0) * ((-level).exp() + q / n);
                let wm: Vec<f64> = s.iter().map(|&v| (v - t).max(0.0) * q / n).collect();
                let tot = ws
                    + wm.iter()
                        .enumerate()
                        .filter(|&(y, _)| y != x)
                        .map(|(_, v)| v)
                        .sum::<f64>();
                for y in 0..g.dim() {
                    p[y] = if y == x { ws } else { wm[y] } / tot;
                }
                return p;
            }
        };
        for y in (0..g.dim()).filter(|&y| y != x && Some(y as i64) != g.mask()) {
            p[y] = (1.0 - stay) * s[y] / ssum;
        }
        p[x] = stay;
        p
    }

    /// exp(A) by scaling and squaring of the Taylor series (test-only, small dense matrices).
    fn expm(a: &[Vec<f64>]) -> Vec<Vec<f64>> {
        let n = a.len();
        let norm = a
            .iter()
            .map(|r| r.iter().map(|v| v.abs()).sum::<f64>())
            .fold(0.0, f64::max);
        let sq = (norm.max(1e-300).log2().ceil().max(0.0) as i32) + 4;
        let scale = 0.5f64.powi(sq);
        let b: Vec<Vec<f64>> = a
            .iter()
            .map(|r| r.iter().map(|v| v * scale).collect())
            .collect();
        let mul = |x: &Vec<Vec<f64>>, y: &Vec<Vec<f64>>| -> Vec<Vec<f64>> {
            (0..n)
                .map(|i| {
                    (0..n)
                        .map(|j| (0..n).map(|k| x[i][k] * y[k][j]).sum())
                        .collect()
                })
                .collect()
        };
        let mut term: Vec<Vec<f64>> = (0..n)
            .map(|i| (0..n).map(|j| (i == j) as u8 as f64).collect())
            .collect();
        let mut sum = term.clone();
        for k in 1..30 {
            term = mul(&term, &b);
            term.iter_mut().flatten().for_each(|v| *v /= k as f64);
            sum.iter_mut()
                .flatten()
                .zip(term.iter().flatten())
                .for_each(|(s, t)| *s += t);
        }
        for _ in 0..sq {
            sum = mul(&sum, &sum);
        }
        sum
    }

    /// The rate matrix Q[y][x] = rate x -> y of a graph (docs/math.md section 2).
    fn rate_matrix(g: Graph) -> Vec<Vec<f64>> {
        let dim = g.dim();
        let n = g.vocab_size as f64;
        (0..dim)
            .map(|y| {
                (0..dim)
                    .map(|x| match g.mask().map(|m| m as usize) {
                        Some(m) if x == m => 0.0,
                        Some(m) => (y == m) as u8 as f64 - (y == x) as u8 as f64,
                        None => 1.0 / n - (y == x) as u8 as f64,
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn analytic_probs_equal_the_matrix_exponential_form() {
        // probs_y = [exp(-dQ) s]_y exp(dQ)(x, y), clipped and renormalised, with expm computed numerically.
        for absorbing in [true, false] {
            for &(n, d) in &[(3usize, 0.05f64), (6, 0.7), (5, 2.5)] {
                let g = test_graph(absorbing, n);
                let q = rate_matrix(g);
                let neg: Vec<Vec<f64>> = q
                    .iter()
                    .map(|r| r.iter().map(|v| -d * v).collect())
                    .collect();
                let pos: Vec<Vec<f64>> = q
                    .iter()
                    .map(|r| r.iter().map(|v| d * v).collect())
                    .collect();
                let (em, ep) = (expm(&neg), expm(&pos));
                let r = row(g.dim(), n as u64 + 3, 2.0, 2.0);
                for x in 0..g.dim() {
                    let mut s: Vec<f64> = r.iter().map(|&v| (v as f64).exp()).collect();
                    s[x] = 1.0;
                    let mut p: Vec<f64> = (0..g.dim())
                        .map(|y| (0..g.dim()).map(|j| em[y][j] * s[j]).sum::<f64>() * ep[x][y])
                        .collect();
                    let raw_total: f64 = p.iter().sum();
                    assert!(
                        (raw_total - 1.0).abs() < 1e-12,
                        "unclipped probabilities sum to {raw_total}"
                    );
                    p.iter_mut().for_each(|v| *v = v.max(0.0));
                    let tot: f64 = p.iter().sum();
                    let want: Vec<f64> = p.iter().map(|v| v / tot).collect();
                    let got = step_probs(g, StepKind::Analytic, x, &r, d);
                    for y in 0..g.dim() {
                        assert!((got[y] - want[y]).abs() < 1e-12, "{g:?} d={d} x={x} y={y}");
                    }
                }
            }
        }
    }

    #[test]
    fn absorbing_analytic_probs_are_expm1_times_score() {
        let g = test_graph(true, 10);
        let r = row(11, 1, 6.0, 0.0); // small scores: no clipping at d = 0.2
        let d = 0.2;
        let p = step_probs(g, StepKind::Analytic, 10, &r, d);
        let mut ssum = 0.0;
        for y in 0..10 {
            let s = (r[y] as f64).exp();
            ssum += s;
            assert!((p[y] - d.exp_m1() * s).abs() < 1e-15);
        }
        assert!((p[10] - (1.0 - d.exp_m1() * ssum)).abs() < 1e-15);
    }

    #[test]
    fn clipping_moves_all_mass_off_a_negative_state() {
        // Euler with a huge rate_dt: 1 - c S < 0, so MASK is clipped to 0 and y ~ s_y.
        let g = test_graph(true, 5);
        let r = vec![0.0f32, 1.0, 2.0, -1.0, 0.5, 0.0];
        let p = step_probs(g, StepKind::Euler, 5, &r, 10.0);
        assert_eq!(p[5], 0.0);
        let ssum: f64 = r[..5].iter().map(|&v| (v as f64).exp()).sum();
        for y in 0..5 {
            assert!((p[y] - (r[y] as f64).exp() / ssum).abs() < 1e-15);
        }
        // The fused kernel never keeps MASK there.
        let c = draw_counts(g, StepKind::Euler, 5, &r, 10.0, 10_000);
        assert_eq!(c[5], 0);
    }

    #[test]
    fn absorbing_real_tokens_never_change_and_denoise_never_masks() {
        let g = test_graph(true, 8);
        let (batch, len) = (3, 40);
        let x: Vec<i64> = (0..batch * len)
            .map(|j| if j % 3 == 0 { 8 } else { (j % 8) as i64 })
            .collect();
        let mut ls = row(batch * len * 9, 3, 5.0, 5.0);
        // NaN in rows that are not MASK: never read, so ignored; NaN in the MASK entry: ignored.
        for j in 0..batch * len {
            if x[j] != 8 {
                ls[j * 9 + 1] = f32::NAN;
            } else {
                ls[j * 9 + 8] = f32::NAN;
            }
        }
        for kind in KINDS {
            let mut out = vec![0; x.len()];
            reverse_step(
                kind,
                g,
                &x,
                &ls,
                &[0.5, 2.0, 1e-4],
                len,
                RngKey::new(1, 2, 3),
                &mut out,
            )
            .unwrap();
            for (&o, &t) in out.iter().zip(&x) {
                if t != 8 {
                    assert_eq!(o, t);
                }
                if kind == StepKind::Denoise {
                    assert_ne!(o, 8);
                }
                assert!((0..9).contains(&o));
            }
        }
    }

    #[test]
    fn step_kinds_round_trip_through_their_names() {
        for kind in KINDS {
            assert_eq!(StepKind::from_name(kind.name()), Ok(kind));
        }
        let e = StepKind::from_name("Euler").unwrap_err();
        assert!(matches!(e, KernelError::Value { arg: "kind", .. }), "{e}");
        assert!(e.to_string().contains("got \"Euler\""), "{e}");
    }

    #[test]
    fn zero_noise_keeps_every_token() {
        for absorbing in [true, false] {
            let g = test_graph(absorbing, 6);
            let x: Vec<i64> = (0..12).map(|j| (j % g.dim()) as i64).collect();
            let ls = row(12 * g.dim(), 4, 3.0, 3.0);
            for kind in [StepKind::Euler, StepKind::Analytic] {
                let mut out = vec![0; 12];
                reverse_step(
                    kind,
                    g,
                    &x,
                    &ls,
                    &[0.0, 0.0],
                    6,
                    RngKey::new(0, 0, 0),
                    &mut out,
                )
                .unwrap();
                assert_eq!(out, x);
            }
        }
    }

    #[test]
    fn errors() {
        let g = test_graph(true, 3);
        let k = RngKey::new(0, 0, 0);
        let x = [3i64, 0, 3, 1];
        let ls = vec![0.0f32; 16];
        let mut out = [0i64; 4];
        let e = reverse_step(
            StepKind::Analytic,
            g,
            &x,
            &ls[..12],
            &[0.1, 0.1],
            2,
            k,
            &mut out,
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                KernelError::Shape {
                    arg: "log_score",
                    ..
                }
            ),
            "{e}"
        );
        let e = reverse_step(
            StepKind::Analytic,
            g,
            &[3, 0, 4, 1],
            &ls,
            &[0.1, 0.1],
            2,
            k,
            &mut out,
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                KernelError::TokenOutOfRange {
                    b: 1,
                    i: 0,
                    token: 4,
                    ..
                }
            ),
            "{e}"
        );
        let e =
            reverse_step(StepKind::Euler, g, &x, &ls, &[0.1, -0.1], 2, k, &mut out).unwrap_err();
        assert!(
            matches!(
                e,
                KernelError::BadNoise {
                    arg: "rate_dt",
                    b: 1,
                    ..
                }
            ),
            "{e}"
        );
        let e = reverse_step(
            StepKind::Denoise,
            g,
            &x,
            &ls,
            &[f64::NAN, 0.1],
            2,
            k,
            &mut out,
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                KernelError::BadNoise {
                    arg: "sigma",
                    b: 0,
                    ..
                }
            ),
            "{e}"
        );
        let mut l2 = ls.clone();
        l2[8 + 2] = f32::NEG_INFINITY; // -inf is probability 0, not an error
        reverse_step(StepKind::Analytic, g, &x, &l2, &[0.1, 0.1], 2, k, &mut out).unwrap();
        for bad in [f32::NAN, f32::INFINITY] {
            let mut l2 = ls.clone();
            l2[8 + 2] = bad; // row (1, 0) is MASK: read
            let e = reverse_step(StepKind::Analytic, g, &x, &l2, &[0.1, 0.1], 2, k, &mut out)
                .unwrap_err();
            assert!(
                matches!(
                    e,
                    KernelError::NonFiniteLogScore {
                        b: 1,
                        i: 0,
                        y: 2,
                        ..
                    }
                ),
                "{e}"
            );
        }
        // Uniform: the MASK id of the absorbing graph is out of range.
        let u = test_graph(false, 3);
        let e = reverse_step(
            StepKind::Analytic,
            u,
            &x,
            &ls[..12],
            &[0.1, 0.1],
            2,
            k,
            &mut out,
        )
        .unwrap_err();
        assert!(
            matches!(e, KernelError::TokenOutOfRange { token: 3, .. }),
            "{e}"
        );
        // Uniform: a NaN at the current token is ignored, anywhere else it is an error.
        let mut l3 = vec![0.0f32; 12];
        l3[1] = f32::NAN; // row (0, 0), x = 1
        reverse_step(
            StepKind::Analytic,
            u,
            &[1, 0, 2, 1],
            &l3,
            &[0.1, 0.1],
            2,
            k,
            &mut out,
        )
        .unwrap();
        let e = reverse_step(
            StepKind::Analytic,
            u,
            &[2, 0, 2, 1],
            &l3,
            &[0.1, 0.1],
            2,
            k,
            &mut out,
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                KernelError::NonFiniteLogScore {
                    b: 0,
                    i: 0,
                    y: 1,
                    ..
                }
            ),
            "{e}"
        );
        // Empty shapes.
        reverse_step(StepKind::Analytic, g, &[], &[], &[], 4, k, &mut []).unwrap();
        reverse_step(StepKind::Analytic, g, &[], &[], &[0.1, 0.1], 0, k, &mut []).unwrap();
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn probs_sum_to_one_and_are_non_negative(
            absorbing: bool, n in 1usize..40, level in 0.0f64..20.0, seed: u64, spread in 0.1f32..12.0,
        ) {
            let g = test_graph(absorbing, n);
            let r = row(g.dim(), seed, spread, spread);
            for kind in KINDS {
                for x in [0, g.dim() - 1] {
                    let p = step_probs(g, kind, x, &r, level.max(1e-9));
                    prop_assert!(p.iter().all(|&v| v >= 0.0));
                    prop_assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
                }
            }
        }

        #[test]
        fn same_result_for_any_thread_count_and_split(
            absorbing: bool, n in 1usize..300, batch in 2usize..5, len in 1usize..12, seed: u64,
            step in 0u64..1000, level in 0.0f64..3.0,
        ) {
            let g = test_graph(absorbing, n);
            let x: Vec<i64> = (0..batch * len).map(|j| (j * 5 % g.dim()) as i64).collect();
            let ls = row(batch * len * g.dim(), seed, 4.0, 2.0);
            let lv = vec![level; batch];
            let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
            let two = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
            for kind in KINDS {
                let run = |x: &[i64], ls: &[f32], lv: &[f64], off: u64| {
                    let mut out = vec![0; x.len()];
                    reverse_step(kind, g, x, ls, lv, len, RngKey::new(seed, step, off), &mut out).unwrap();
                    out
                };
                let a = one.install(|| run(&x, &ls, &lv, 0));
                let b = two.install(|| run(&x, &ls, &lv, 0));
                prop_assert_eq!(&a, &b);
                let cut = len * g.dim();
                let mut split = run(&x[..len], &ls[..cut], &lv[..1], 0);
                split.extend(run(&x[len..], &ls[cut..], &lv[1..], 1));
                prop_assert_eq!(&a, &split);
                prop_assert!(a.iter().all(|&t| t >= 0 && (t as usize) < g.dim()));
                if absorbing && kind == StepKind::Denoise {
                    prop_assert!(a.iter().all(|&t| t != n as i64));
                }
            }
        }
    }
}
