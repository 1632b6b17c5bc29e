//! Proposals of the unmasking samplers (confidence-ordered decoding, docs/math.md section 9; the torch
//! twin is `ddm.sampling.confidence.propose`).
//!
//! At every MASK position of an absorbing-graph batch: draw a token from the model's conditional over
//! the real tokens, softmax(l_{0..N-1}), transformed by temperature / top-k / top-p (`proposal.rs`), by
//! an exact float64 inverse CDF, and report three statistics of the transformed law: the probability of
//! the drawn token, the top-1 minus top-2 margin, and the entropy in nats. With w_y = exp((l_y - m) / T)
//! the entropy is ln Z - sum_y w_y ln w_y / Z over the kept states, where ln w_y = (l_y - m) / T needs no
//! logarithm: one exp per state in all.

use rayon::prelude::*;

use crate::categorical::{checked_max, draw, exp_weights};
use crate::error::KernelError;
use crate::graphs::{check_tokens_shape, Graph};
use crate::proposal::{truncate, Transform};
use crate::rng::{Domain, RngKey};
use crate::steps::Scratch;

/// One MASK position: (token, [p(token), margin, entropy]).
fn propose_position(
    row: &[f32],
    tf: &Transform,
    u: f64,
    scratch: &mut Scratch,
    at: (usize, usize),
) -> Result<(i64, [f64; 3]), KernelError> {
    let m = checked_max(row, None, at)? as f64;
    if m == f64::NEG_INFINITY {
        return Err(KernelError::NoMass { b: at.0, i: at.1 });
    }
    let inv_t = 1.0 / tf.temperature;
    let (w, _, rank) = scratch.weights(row.len());
    exp_weights(row, m, inv_t, w);
    if tf.truncates(row.len()) {
        truncate(w, tf, rank);
        rank.sort_unstable_by_key(|e| e.1);
    } else {
        rank.clear();
        rank.extend(
            w.iter()
                .enumerate()
                .filter(|&(_, &v)| v > 0.0)
                .map(|(y, &v)| (v, y as u32)),
        );
    }
    let total: f64 = rank.iter().map(|e| e.0).sum();
    let y = draw(rank.iter().map(|&(v, y)| (v, y as usize)), u)
        .ok_or(KernelError::NoMass { b: at.0, i: at.1 })?;
    let (mut p1, mut p2, mut wlw) = (0.0f64, 0.0f64, 0.0f64);
    for &(v, k) in rank.iter() {
        if v > p1 {
            p2 = p1;
            p1 = v;
        } else if v > p2 {
            p2 = v;
        }
        wlw += v * ((row[k as usize] as f64 - m) * inv_t);
    }
    let entropy = (total.ln() - wlw / total).max(0.0);
    Ok((y as i64, [w[y] / total, (p1 - p2) / total, entropy]))
}

/// Proposals at every MASK position of `x` (`[B, L]` flattened, `log_score` `[B, L, dim]`), written into
/// `tokens` (`[B, L]`: `x` where not MASK) and `stats` (`[B, L, 3]`: 0 where not MASK). Position (b, i)
/// draws from the stream (seed, step, seq_offset + b, i).
#[allow(clippy::too_many_arguments)]
pub fn propose(
    graph: Graph,
    x: &[i64],
    log_score: &[f32],
    batch: usize,
    len: usize,
    key: RngKey,
    tf: Transform,
    tokens: &mut [i64],
    stats: &mut [f64],
) -> Result<(), KernelError> {
    let Some(mask) = graph.mask() else {
        return Err(KernelError::Value {
            arg: "graph",
            msg: "the uniform graph has no MASK to unmask".into(),
        });
    };
    let n = check_tokens_shape(x, tokens, batch, len)?;
    let dim = graph.dim();
    if n.checked_mul(dim) != Some(log_score.len()) || stats.len() != 3 * n {
        return Err(KernelError::Shape {
            arg: "log_score",
            msg: format!(
                "has {} elements, expected B * L * dim = {batch} * {len} * {dim}",
                log_score.len()
            ),
        });
    }
    if n == 0 {
        return Ok(());
    }
    graph.check_tokens("x", x, len)?;
    let tf = Transform::new(tf.temperature, tf.top_k, tf.top_p)?;
    tokens
        .par_iter_mut()
        .zip(stats.par_chunks_mut(3))
        .zip(x.par_iter())
        .zip(log_score.par_chunks(dim))
        .enumerate()
        .try_for_each_init(Scratch::default, |scratch, (j, (((t, s), &xj), row))| {
            if xj != mask {
                *t = xj;
                s.fill(0.0);
                return Ok(());
            }
            let (b, i) = (j / len, j % len);
            let u = key.stream(Domain::Step, b, i).uniform();
            let (y, st) = propose_position(&row[..graph.vocab_size], &tf, u, scratch, (b, i))?;
            *t = y;
            s.copy_from_slice(&st);
            Ok(())
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graphs::test_graph;

    /// The transformed conditional by brute force (std exp, a full sort).
    fn reference(row: &[f32], t: f64, k: Option<usize>, p: Option<f64>) -> Vec<f64> {
        let m = row.iter().fold(f64::NEG_INFINITY, |a, &v| a.max(v as f64));
        let w: Vec<f64> = row.iter().map(|&v| ((v as f64 - m) / t).exp()).collect();
        let mut idx: Vec<usize> = (0..w.len()).collect();
        idx.sort_by(|&a, &b| w[b].total_cmp(&w[a]).then(a.cmp(&b)));
        if let Some(k) = k {
            idx.truncate(k);
        }
        if let Some(p) = p {
            let tot: f64 = idx.iter().map(|&y| w[y]).sum();
            let (mut acc, mut keep) = (0.0, vec![]);
            for &y in &idx {
                if acc >= p * tot {
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

    #[test]
    fn statistics_are_those_of_the_transformed_law() {
        let mut r = RngKey::new(4, 0, 0).stream(Domain::Step, 0, 0);
        let n = 50;
        let g = test_graph(true, n);
        let row: Vec<f32> = (0..n + 1)
            .map(|_| -6.0 + 7.0 * r.uniform() as f32)
            .collect();
        for (t, k, p) in [
            (1.0, None, None),
            (0.5, Some(7), None),
            (2.0, None, Some(0.8)),
        ] {
            let tf = Transform::new(t, k, p).unwrap();
            let want = reference(&row[..n], t, k, p);
            let (batch, len) = (40, 250);
            let x = vec![n as i64; batch * len];
            let ls: Vec<f32> = row
                .iter()
                .copied()
                .cycle()
                .take(batch * len * (n + 1))
                .collect();
            let mut tok = vec![0i64; batch * len];
            let mut st = vec![0f64; 3 * batch * len];
            propose(
                g,
                &x,
                &ls,
                batch,
                len,
                RngKey::new(1, 2, 0),
                tf,
                &mut tok,
                &mut st,
            )
            .unwrap();
            let h: f64 = want
                .iter()
                .filter(|&&v| v > 0.0)
                .map(|&v| -v * v.ln())
                .sum();
            let mut sorted = want.clone();
            sorted.sort_by(|a, b| b.total_cmp(a));
            let mut counts = vec![0u64; n + 1];
            for (j, &y) in tok.iter().enumerate() {
                counts[y as usize] += 1;
                assert!((st[3 * j] - want[y as usize]).abs() < 1e-12);
                assert!((st[3 * j + 1] - (sorted[0] - sorted[1])).abs() < 1e-12);
                assert!(
                    (st[3 * j + 2] - h).abs() < 1e-10,
                    "{} vs {h}",
                    st[3 * j + 2]
                );
            }
            let stat = crate::categorical::tests::chi2(&counts, &want);
            let dof = want.iter().filter(|&&v| v > 0.0).count().max(2) as f64 - 1.0;
            assert!(
                stat < dof + 6.0 * (2.0 * dof).sqrt() + 10.0,
                "chi2 {stat} dof {dof}"
            );
        }
    }

    #[test]
    fn real_tokens_are_kept_and_uniform_is_refused() {
        let g = test_graph(true, 3);
        let x = [0i64, 3, 2, 3];
        let ls = vec![0.0f32; 16];
        let (mut tok, mut st) = (vec![0; 4], vec![0.0; 12]);
        let tf = Transform::new(1.0, None, None).unwrap();
        propose(
            g,
            &x,
            &ls,
            2,
            2,
            RngKey::new(0, 0, 0),
            tf,
            &mut tok,
            &mut st,
        )
        .unwrap();
        assert_eq!((tok[0], tok[2]), (0, 2));
        assert!(tok[1] < 3 && tok[3] < 3);
        let u = test_graph(false, 3);
        let e = propose(
            u,
            &[0, 1],
            &[0.0; 6],
            1,
            2,
            RngKey::new(0, 0, 0),
            tf,
            &mut [0; 2],
            &mut [0.0; 6],
        );
        assert!(matches!(e, Err(KernelError::Value { arg: "graph", .. })));
    }
}
