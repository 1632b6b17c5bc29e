//! The two forward graphs of SEDD (Lou, Meng, Ermon 2024, section 3.3 and docs/math.md section 2) and forward
//! corruption in closed form.
//!
//! Uniform, Q = (1/N) 1 1^T - I: with probability 1 - e^{-sigma} a token is replaced by a uniform draw
//! over all N ids. Absorbing (MASK = N, the last of N + 1 states): with probability 1 - e^{-sigma} a
//! token becomes MASK, and MASK stays MASK.

use rayon::prelude::*;

use crate::error::KernelError;
use crate::keyed::CounterKey;

/// The graphs the kernels know. It crosses the Python boundary as its [`name`](GraphKind::name); any
/// other name is an error ([`GraphKind::from_name`]), so a graph without a kernel never runs another's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphKind {
    /// Absorbing: N real ids and MASK = N.
    Absorbing,
    /// Uniform: N ids, no MASK.
    Uniform,
}

impl GraphKind {
    /// Every kind, in the order of [`GraphKind::name`]'s list.
    pub const ALL: [GraphKind; 2] = [GraphKind::Absorbing, GraphKind::Uniform];

    /// The kind's name across the Python boundary: `"absorbing"` or `"uniform"`.
    pub fn name(self) -> &'static str {
        match self {
            GraphKind::Absorbing => "absorbing",
            GraphKind::Uniform => "uniform",
        }
    }

    /// The kind called `name` (see [`GraphKind::name`]); a `Value` error naming `graph` otherwise.
    pub fn from_name(name: &str) -> Result<Self, KernelError> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .ok_or_else(|| KernelError::Value {
                arg: "graph",
                msg: format!(
                    "the Rust core has kernels for the graphs 'absorbing' and 'uniform' only, got \
                     {name:?} (use the torch backend for other graphs)"
                ),
            })
    }
}

/// A graph on one token: `vocab_size` real ids, plus MASK = `vocab_size` when absorbing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Graph {
    pub kind: GraphKind,
    pub vocab_size: usize,
}

impl Graph {
    /// Checks `vocab_size >= 1` and that every state id fits an i64.
    pub fn new(kind: GraphKind, vocab_size: usize) -> Result<Self, KernelError> {
        if vocab_size < 1 || vocab_size >= i64::MAX as usize {
            return Err(KernelError::Value {
                arg: "vocab_size",
                msg: format!("must be in [1, 2^63 - 1), got {vocab_size}"),
            });
        }
        Ok(Self { kind, vocab_size })
    }

    /// Whether the graph has the absorbing MASK state.
    pub fn is_absorbing(&self) -> bool {
        self.kind == GraphKind::Absorbing
    }

    /// Number of states of one token: N + 1 absorbing, N uniform.
    pub fn dim(&self) -> usize {
        self.vocab_size + self.is_absorbing() as usize
    }

    /// The MASK id (N) of the absorbing graph.
    pub fn mask(&self) -> Option<i64> {
        self.is_absorbing().then_some(self.vocab_size as i64)
    }

    /// Checks every token is a state of the graph (`[0, N]` absorbing, `[0, N)` uniform).
    /// `x` is `[B, L]` flattened; `len` is L (> 0).
    pub fn check_tokens(
        &self,
        arg: &'static str,
        x: &[i64],
        len: usize,
    ) -> Result<(), KernelError> {
        let dim = self.dim() as i64;
        match x.iter().position(|&t| t < 0 || t >= dim) {
            None => Ok(()),
            Some(j) => Err(KernelError::TokenOutOfRange {
                arg,
                b: j / len,
                i: j % len,
                token: x[j],
                allowed: if self.is_absorbing() {
                    format!(
                        "the absorbing graph with vocab_size {} has ids 0..={} (MASK = {})",
                        self.vocab_size, self.vocab_size, self.vocab_size
                    )
                } else {
                    format!(
                        "the uniform graph with vocab_size {} has ids 0..{} (no MASK)",
                        self.vocab_size, self.vocab_size
                    )
                },
            }),
        }
    }
}

/// Checks that a per-sequence noise level is finite and non-negative.
pub fn check_levels(arg: &'static str, levels: &[f64]) -> Result<(), KernelError> {
    match levels.iter().position(|v| !(v.is_finite() && *v >= 0.0)) {
        None => Ok(()),
        Some(b) => Err(KernelError::BadNoise {
            arg,
            b,
            value: levels[b],
        }),
    }
}

/// Checks `x` (`[B, L]`), `out` (`[B, L]`) against B = `batch` and L = `len`. Returns `B * L`.
pub(crate) fn check_tokens_shape(
    x: &[i64],
    out: &[i64],
    batch: usize,
    len: usize,
) -> Result<usize, KernelError> {
    let n = batch.checked_mul(len).ok_or_else(|| KernelError::Shape {
        arg: "x",
        msg: format!("B * L = {batch} * {len} overflows"),
    })?;
    if x.len() != n {
        return Err(KernelError::Shape {
            arg: "x",
            msg: format!("has {} elements, expected B * L = {batch} * {len}", x.len()),
        });
    }
    if out.len() != n {
        return Err(KernelError::Shape {
            arg: "out",
            msg: format!(
                "has {} elements, expected B * L = {batch} * {len}",
                out.len()
            ),
        });
    }
    Ok(n)
}

/// The probability that a token moves under total noise `sigma`: 1 - e^{-sigma}, without cancellation.
pub fn jump_probability(sigma: f64) -> f64 {
    -(-sigma).exp_m1()
}

/// Checks that every per-sequence jump probability is in [0, 1] (NaN is not).
fn check_probabilities(arg: &'static str, p: &[f64]) -> Result<(), KernelError> {
    match p.iter().position(|v| !(0.0..=1.0).contains(v)) {
        None => Ok(()),
        Some(b) => Err(KernelError::Value {
            arg,
            msg: format!(
                "jump probability {} at [{b}] must be finite and in [0, 1]",
                p[b]
            ),
        }),
    }
}

/// Forward corruption x_sigma ~ p_sigma|0(. | x) (docs/math.md section 2), written into `out`, keyed exactly as
/// the torch twin (`Sampler.add_noise`, the keyed training loss), so both give the same tokens.
///
/// `x`: `[B, L]` flattened row-major, `p_move`: `[B]` the probability that a token moves,
/// 1 - e^{-sigma} ([`jump_probability`]; B = `p_move.len()`), `len`: L. Position (b, i) draws one
/// uniform u keyed by (seed, stream, step, seq_offset + b, i) ([`CounterKey`]) and moves when
/// u < p_move: absorbing, to MASK (MASK stays MASK); uniform, to floor(u / p_move * N) (given a move,
/// u / p_move is uniform on [0, 1)), clamped to N - 1. Every operation is the torch twin's, in f64.
pub fn corrupt(
    graph: Graph,
    x: &[i64],
    p_move: &[f64],
    len: usize,
    key: CounterKey,
    out: &mut [i64],
) -> Result<(), KernelError> {
    let batch = p_move.len();
    let n = check_tokens_shape(x, out, batch, len)?;
    check_probabilities("p_move", p_move)?;
    if n == 0 {
        return Ok(());
    }
    graph.check_tokens("x", x, len)?;
    let n_ids = graph.vocab_size as f64;
    let last = graph.vocab_size as i64 - 1;
    let mask = graph.mask();
    out.par_chunks_mut(len)
        .zip(x.par_chunks(len))
        .enumerate()
        .for_each(|(b, (orow, xrow))| {
            let p = p_move[b];
            let denom = p.max(1e-300); // as torch's clamp_min: u < p <= 1e-300 only for u = 0
            let row = key.row(b); // the row's hash, once per row
            for (i, (o, &t)) in orow.iter_mut().zip(xrow).enumerate() {
                let u = row.uniform(i);
                *o = if u >= p {
                    t
                } else {
                    match mask {
                        Some(m) => m,
                        None => ((u / denom * n_ids).floor() as i64).min(last),
                    }
                };
            }
        });
    Ok(())
}

/// The graph of `vocab_size` that is absorbing or not (tests loop over both).
#[cfg(test)]
pub(crate) fn test_graph(absorbing: bool, vocab_size: usize) -> Graph {
    let kind = if absorbing {
        GraphKind::Absorbing
    } else {
        GraphKind::Uniform
    };
    Graph::new(kind, vocab_size).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Jump probabilities of total noises.
    fn probs(sigma: &[f64]) -> Vec<f64> {
        sigma.iter().map(|&s| jump_probability(s)).collect()
    }

    fn key(seed: u64, seq_offset: u64) -> CounterKey {
        CounterKey::new(seed, 0x5eed_0003, 0, seq_offset)
    }

    fn run(graph: Graph, x: &[i64], sigma: &[f64], len: usize, seed: u64) -> Vec<i64> {
        let mut out = vec![-1; x.len()];
        corrupt(graph, x, &probs(sigma), len, key(seed, 0), &mut out).unwrap();
        out
    }

    #[test]
    fn absorbing_masks_at_the_closed_form_rate() {
        // 100_000 tokens at sigma = 0.7: P(MASK) = 1 - e^{-0.7}; binomial sd ~ 0.0015; allow 5 sd.
        let g = Graph::new(GraphKind::Absorbing, 10).unwrap();
        let len = 1000;
        let x: Vec<i64> = (0..100 * len).map(|j| (j % 10) as i64).collect();
        let out = run(g, &x, &[0.7; 100], len, 3);
        let frac = out.iter().filter(|&&t| t == 10).count() as f64 / out.len() as f64;
        let want = 1.0 - (-0.7f64).exp();
        assert!((frac - want).abs() < 5.0 * (want * (1.0 - want) / out.len() as f64).sqrt());
        // Unmasked tokens are unchanged.
        assert!(out.iter().zip(&x).all(|(&o, &t)| o == t || o == 10));
    }

    #[test]
    fn absorbing_mask_stays_mask() {
        let g = Graph::new(GraphKind::Absorbing, 4).unwrap();
        let out = run(g, &[4, 4, 4, 4], &[0.0, 0.0], 2, 0);
        assert_eq!(out, vec![4, 4, 4, 4]);
    }

    #[test]
    fn uniform_follows_the_transition_law() {
        // x0 = 2 with N = 5 at sigma = 1.3: p(y | 2) = e [y = 2] + (1 - e) / 5. Chi-square, 4 dof,
        // 100_000 draws; P(chi2_4 > 30) < 5e-6.
        let g = Graph::new(GraphKind::Uniform, 5).unwrap();
        let len = 1000;
        let x = vec![2i64; 100 * len];
        let out = run(g, &x, &[1.3; 100], len, 9);
        let mut counts = [0u64; 5];
        for &t in &out {
            counts[t as usize] += 1;
        }
        let e = (-1.3f64).exp();
        let p: Vec<f64> = (0..5)
            .map(|y| if y == 2 { e } else { 0.0 } + (1.0 - e) / 5.0)
            .collect();
        let c = crate::categorical::tests::chi2(&counts, &p);
        assert!(c < 30.0, "chi2 = {c}");
    }

    #[test]
    fn sigma_zero_is_identity_and_large_sigma_reaches_the_limit() {
        let g = Graph::new(GraphKind::Absorbing, 3).unwrap();
        let x = vec![0i64, 1, 2, 0, 1, 2];
        assert_eq!(run(g, &x, &[0.0, 0.0], 3, 1), x);
        assert_eq!(run(g, &x, &[50.0, 50.0], 3, 1), vec![3; 6]);
    }

    #[test]
    fn errors() {
        let g = Graph::new(GraphKind::Uniform, 3).unwrap();
        let mut out = vec![0; 4];
        let k = key(0, 0);
        let e = corrupt(g, &[0, 1, 3, 0], &[0.1, 0.1], 2, k, &mut out).unwrap_err();
        assert!(
            matches!(
                e,
                KernelError::TokenOutOfRange {
                    b: 1,
                    i: 0,
                    token: 3,
                    ..
                }
            ),
            "{e}"
        );
        let e = corrupt(g, &[0, 1, -1, 0], &[0.1, 0.1], 2, k, &mut out).unwrap_err();
        assert!(matches!(e, KernelError::TokenOutOfRange { .. }));
        for bad in [-1.0, 1.5, f64::NAN, f64::INFINITY] {
            let e = corrupt(g, &[0, 1, 2, 0], &[0.1, bad], 2, k, &mut out).unwrap_err();
            assert!(matches!(e, KernelError::Value { arg: "p_move", .. }), "{e}");
            assert!(e.to_string().contains("at [1] must be finite"), "{e}");
        }
        let e = corrupt(g, &[0, 1, 2], &[0.1, 0.1], 2, k, &mut out).unwrap_err();
        assert!(matches!(e, KernelError::Shape { arg: "x", .. }));
        let e = corrupt(g, &[0, 1, 2, 0], &[0.1, 0.1], 2, k, &mut out[..3]).unwrap_err();
        assert!(matches!(e, KernelError::Shape { arg: "out", .. }));
        assert!(Graph::new(GraphKind::Absorbing, 0).is_err());
        // Empty batches and empty sequences are fine.
        corrupt(g, &[], &[], 5, k, &mut []).unwrap();
        corrupt(g, &[], &[0.1, 0.2], 0, k, &mut []).unwrap();
    }

    #[test]
    fn graph_kinds_round_trip_and_an_unknown_kind_is_an_error() {
        for kind in GraphKind::ALL {
            assert_eq!(GraphKind::from_name(kind.name()), Ok(kind));
        }
        for bad in ["lazy", "Uniform", "", "absorbing "] {
            let e = GraphKind::from_name(bad).unwrap_err();
            assert!(matches!(e, KernelError::Value { arg: "graph", .. }), "{e}");
            assert!(e.to_string().contains(&format!("got {bad:?}")), "{e}");
        }
    }

    proptest! {
        #[test]
        fn same_result_for_any_thread_count_and_split(
            seed: u64, absorbing: bool, n in 1usize..40, batch in 2usize..6, len in 1usize..20,
            sigma in 0.0f64..3.0,
        ) {
            let g = test_graph(absorbing, n);
            let x: Vec<i64> = (0..batch * len).map(|j| (j * 7 % g.dim()) as i64).collect();
            let s = vec![sigma; batch];
            let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
            let two = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
            let a = one.install(|| run(g, &x, &s, len, seed));
            let b = two.install(|| run(g, &x, &s, len, seed));
            prop_assert_eq!(&a, &b);
            // Split the batch after the first sequence: the second part uses seq_offset = 1.
            let mut head = vec![0; len];
            let mut tail = vec![0; (batch - 1) * len];
            let p = probs(&s);
            corrupt(g, &x[..len], &p[..1], len, key(seed, 0), &mut head).unwrap();
            corrupt(g, &x[len..], &p[1..], len, key(seed, 1), &mut tail).unwrap();
            head.extend(tail);
            prop_assert_eq!(a, head);
        }

        #[test]
        fn output_is_always_a_state(seed: u64, absorbing: bool, n in 1usize..10, sigma in 0.0f64..100.0) {
            let g = test_graph(absorbing, n);
            let x: Vec<i64> = (0..64).map(|j| (j % g.dim()) as i64).collect();
            let out = run(g, &x, &[sigma; 4], 16, seed);
            prop_assert!(out.iter().all(|&t| t >= 0 && (t as usize) < g.dim()));
        }
    }
}
