//! PyO3 bindings: argument checks, error mapping and GIL release only; no math here.
//!
//! Every array is checked before it is borrowed: exact dtype (nothing is cast), rank, shape against the
//! other arguments and the graph, C-contiguity and alignment. Inputs are borrowed read-only in place;
//! every kernel runs through [`run`], with the GIL released inside the process's rayon pool
//! (`threads.rs`); a new result is handed to NumPy without a copy, or written into `out`. The graph
//! crosses as its kind's name ("absorbing" or "uniform"); any other name is an error, never a fallback.

use numpy::ndarray::{Array2, Array3, Dimension};
use numpy::prelude::*;
use numpy::{
    dtype, Element, PyArray, PyArray1, PyArray2, PyArray3, PyReadonlyArray, PyUntypedArray,
};
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyInt, PyString};

use crate::error::KernelError;
use crate::graphs::{self, Graph, GraphKind};
use crate::keyed::CounterKey;
use crate::proposal::{self, Transform};
use crate::rng::RngKey;
use crate::steps::{self, StepKind};
use crate::threads;
use crate::unmask;

impl From<KernelError> for PyErr {
    fn from(e: KernelError) -> PyErr {
        if e.is_type_error() {
            PyTypeError::new_err(e.to_string())
        } else {
            PyValueError::new_err(e.to_string())
        }
    }
}

fn type_err(arg: &'static str, msg: String) -> KernelError {
    KernelError::Type { arg, msg }
}

fn shape_err(arg: &'static str, msg: String) -> KernelError {
    KernelError::Shape { arg, msg }
}

/// Runs `kernel` with the GIL released, inside the process's rayon pool, and maps its error onto a
/// Python exception: the one way every binding calls a kernel.
fn run<T, F>(py: Python<'_>, kernel: F) -> PyResult<T>
where
    T: Send,
    F: FnOnce() -> Result<T, KernelError> + Send,
{
    let pool = threads::pool().map_err(PyRuntimeError::new_err)?;
    Ok(py.detach(|| pool.install(kernel))?)
}

/// `obj` as a NumPy array of exactly element type `T` and rank `ndim`, C-contiguous and aligned.
fn checked_array<'py, T: Element, D: Dimension>(
    obj: &Bound<'py, PyAny>,
    arg: &'static str,
    dtype_name: &str,
    layout: &str,
) -> Result<Bound<'py, PyArray<T, D>>, KernelError> {
    let py = obj.py();
    let arr = obj.cast::<PyUntypedArray>().map_err(|_| {
        let ty = obj
            .get_type()
            .name()
            .map_or_else(|_| "?".to_string(), |n| n.to_string());
        type_err(
            arg,
            format!("expected a numpy.ndarray of dtype {dtype_name}, got {ty}"),
        )
    })?;
    let dt = arr.dtype();
    if !dt.is_equiv_to(&dtype::<T>(py)) {
        return Err(type_err(
            arg,
            format!("expected dtype {dtype_name}, got {dt} (nothing is cast implicitly)"),
        ));
    }
    let nd = D::NDIM.unwrap_or(0);
    if arr.ndim() != nd {
        return Err(shape_err(
            arg,
            format!(
                "expected a {nd}-d array {layout}, got shape {:?}",
                arr.shape()
            ),
        ));
    }
    if !arr.is_c_contiguous() {
        return Err(shape_err(
            arg,
            "must be C-contiguous (use np.ascontiguousarray)".into(),
        ));
    }
    if !arr.is_aligned() {
        return Err(shape_err(arg, "must be aligned for its dtype".into()));
    }
    arr.cast::<PyArray<T, D>>().cloned().map_err(|_| {
        type_err(
            arg,
            format!("expected a numpy.ndarray of dtype {dtype_name}"),
        )
    })
}

/// A read-only borrow of a checked array (refused while something else holds it mutably).
fn borrow<'py, T: Element, D: Dimension>(
    a: &Bound<'py, PyArray<T, D>>,
    arg: &'static str,
) -> Result<PyReadonlyArray<'py, T, D>, KernelError> {
    a.try_readonly()
        .map_err(|e| shape_err(arg, format!("cannot be borrowed: {e}")))
}

/// The data of a borrowed C-contiguous array as a slice.
fn slice<'a, T: Element, D: Dimension>(
    a: &'a PyReadonlyArray<'_, T, D>,
    arg: &'static str,
) -> Result<&'a [T], KernelError> {
    a.as_slice().map_err(|e| shape_err(arg, e.to_string()))
}

/// A Python int in [0, 2^64): TypeError for a non-integer, ValueError when out of range.
fn uint(obj: &Bound<'_, PyAny>, arg: &'static str) -> Result<u64, KernelError> {
    if obj.is_instance_of::<PyBool>() {
        return Err(type_err(arg, "expected an int, got bool".into()));
    }
    match obj.extract::<u64>() {
        Ok(v) => Ok(v),
        Err(_) if obj.is_instance_of::<PyInt>() || obj.hasattr("__index__").unwrap_or(false) => {
            Err(KernelError::Value {
                arg,
                msg: format!("must be an integer in [0, 2**64), got {obj}"),
            })
        }
        Err(_) => Err(type_err(
            arg,
            format!("expected an int, got {}", obj.get_type()),
        )),
    }
}

/// The Python str `obj` (argument `arg`), for a name that `expected` lists.
fn name<'a>(
    obj: &'a Bound<'_, PyAny>,
    arg: &'static str,
    expected: &str,
) -> Result<std::borrow::Cow<'a, str>, KernelError> {
    let s = obj.cast::<PyString>().map_err(|_| {
        type_err(
            arg,
            format!("expected a str ({expected}), got {}", obj.get_type()),
        )
    })?;
    s.to_cow().map_err(|e| type_err(arg, e.to_string()))
}

/// The graph of kind `graph` ("absorbing" or "uniform"; anything else is an error) and `vocab_size`.
fn graph(graph: &Bound<'_, PyAny>, vocab_size: &Bound<'_, PyAny>) -> Result<Graph, KernelError> {
    let kind = GraphKind::from_name(&name(graph, "graph", "'absorbing' or 'uniform'")?)?;
    let n = uint(vocab_size, "vocab_size")?;
    let n = usize::try_from(n).map_err(|_| KernelError::Value {
        arg: "vocab_size",
        msg: format!("too large: {n}"),
    })?;
    Graph::new(kind, n)
}

/// The step named by `kind`: TypeError for a non-string, ValueError naming `kind` for an unknown name.
fn step_kind(kind: &Bound<'_, PyAny>) -> Result<StepKind, KernelError> {
    StepKind::from_name(&name(kind, "kind", "'euler', 'analytic' or 'denoise'")?)
}

/// The checked graph, random key and tokens `x` `[B, L]` shared by every kernel.
struct Common<'py> {
    graph: Graph,
    key: RngKey,
    x: Bound<'py, PyArray2<i64>>,
    batch: usize,
    len: usize,
}

fn common<'py>(
    x: &Bound<'py, PyAny>,
    kind: &Bound<'py, PyAny>,
    vocab_size: &Bound<'py, PyAny>,
    seed: &Bound<'py, PyAny>,
    step: Option<&Bound<'py, PyAny>>,
    seq_offset: Option<&Bound<'py, PyAny>>,
) -> Result<Common<'py>, KernelError> {
    let graph = graph(kind, vocab_size)?;
    let or_zero = |v: Option<&Bound<'py, PyAny>>, arg| v.map_or(Ok(0), |v| uint(v, arg));
    let key = RngKey::new(
        uint(seed, "seed")?,
        or_zero(step, "step")?,
        or_zero(seq_offset, "seq_offset")?,
    );
    let x = checked_array::<i64, _>(x, "x", "int64", "[B, L]")?;
    let (batch, len) = (x.shape()[0], x.shape()[1]);
    Ok(Common {
        graph,
        key,
        x,
        batch,
        len,
    })
}

impl<'py> Common<'py> {
    /// The per-sequence float64 `[B]` argument `arg`.
    fn level(
        &self,
        level: &Bound<'py, PyAny>,
        arg: &'static str,
    ) -> Result<Bound<'py, PyArray1<f64>>, KernelError> {
        let level = checked_array::<f64, _>(level, arg, "float64", "[B]")?;
        if level.shape()[0] != self.batch {
            return Err(shape_err(
                arg,
                format!(
                    "expected shape [B] = [{}] (B from x), got [{}]",
                    self.batch,
                    level.shape()[0]
                ),
            ));
        }
        Ok(level)
    }

    /// The optional int64 `[B, L]` output array.
    fn out(
        &self,
        out: Option<&Bound<'py, PyAny>>,
    ) -> Result<Option<Bound<'py, PyArray2<i64>>>, KernelError> {
        let Some(o) = out.filter(|o| !o.is_none()) else {
            return Ok(None);
        };
        let o = checked_array::<i64, _>(o, "out", "int64", "[B, L]")?;
        if o.shape() != self.x.shape() {
            return Err(shape_err(
                "out",
                format!(
                    "expected shape {:?} (the shape of x), got {:?}",
                    self.x.shape(),
                    o.shape()
                ),
            ));
        }
        Ok(Some(o))
    }

    /// The float32 log-scores `[B, L, dim]`: the one check of a `log_score` argument.
    fn log_score(
        &self,
        log_score: &Bound<'py, PyAny>,
    ) -> Result<Bound<'py, PyArray3<f32>>, KernelError> {
        let ls = checked_array::<f32, _>(log_score, "log_score", "float32", "[B, L, dim]")?;
        let dim = self.graph.dim();
        let sh = ls.shape();
        if sh != [self.batch, self.len, dim] {
            let n = self.graph.vocab_size;
            let why = match self.graph.kind {
                GraphKind::Absorbing => format!(
                    "the absorbing graph with vocab_size {n} has dim = vocab_size + 1 = {dim}"
                ),
                GraphKind::Uniform => {
                    format!("the uniform graph with vocab_size {n} has dim = vocab_size = {dim}")
                }
            };
            return Err(shape_err(
                "log_score",
                format!(
                    "expected shape [B, L, dim] = {:?} ([B, L] from x; {why}), got {sh:?}",
                    [self.batch, self.len, dim]
                ),
            ));
        }
        Ok(ls)
    }
}

impl<'py> Common<'py> {
    /// A reverse step's shared body: checks `level` `[B]`, `out` and `log_score` `[B, L, dim]` (in that
    /// order), borrows them with `x`, and runs `kernel(x, log_score, level, out)` through [`run_tokens`].
    fn run_step<F>(
        &self,
        py: Python<'py>,
        kind: StepKind,
        level: &Bound<'py, PyAny>,
        log_score: &Bound<'py, PyAny>,
        out: Option<&Bound<'py, PyAny>>,
        kernel: F,
    ) -> PyResult<Bound<'py, PyArray2<i64>>>
    where
        F: FnOnce(&[i64], &[f32], &[f64], &mut [i64]) -> Result<(), KernelError> + Send,
    {
        let lv = self.level(level, kind.level_arg())?;
        let out = self.out(out)?;
        let ls = self.log_score(log_score)?;
        let (xr, lr, sr) = (
            borrow(&self.x, "x")?,
            borrow(&lv, "level")?,
            borrow(&ls, "log_score")?,
        );
        let (xs, lvs, lss) = (
            slice(&xr, "x")?,
            slice(&lr, "level")?,
            slice(&sr, "log_score")?,
        );
        run_tokens(py, (self.batch, self.len), out, move |os| {
            kernel(xs, lss, lvs, os)
        })
    }
}

/// Runs a kernel that writes new tokens `[B, L]`, into `out` (returned) or a new array.
fn run_tokens<'py, F>(
    py: Python<'py>,
    shape: (usize, usize),
    out: Option<Bound<'py, PyArray2<i64>>>,
    kernel: F,
) -> PyResult<Bound<'py, PyArray2<i64>>>
where
    F: FnOnce(&mut [i64]) -> Result<(), KernelError> + Send,
{
    match out {
        Some(out) => {
            {
                let mut ow = out.try_readwrite().map_err(|e| {
                    shape_err(
                        "out",
                        format!(
                            "must be writeable and must not share memory with the inputs ({e})"
                        ),
                    )
                })?;
                let os = ow
                    .as_slice_mut()
                    .map_err(|e| shape_err("out", e.to_string()))?;
                run(py, || kernel(os))?;
            }
            Ok(out)
        }
        None => {
            let mut v = vec![0i64; shape.0 * shape.1];
            run(py, || kernel(&mut v))?;
            let a = Array2::from_shape_vec(shape, v)
                .map_err(|e| PyRuntimeError::new_err(format!("internal shape error: {e}")))?;
            Ok(PyArray2::from_owned_array(py, a))
        }
    }
}

/// Forward corruption x_sigma ~ p_sigma|0(. | x) (docs/math.md section 2), keyed as the torch twin: `p_move` is
/// 1 - e^{-sigma} per sequence, `stream` the 32-bit stream tag of the key.
#[pyfunction]
#[pyo3(signature = (x, p_move, graph, vocab_size, seed, stream, step=None, seq_offset=None, out=None))]
#[allow(clippy::too_many_arguments)]
fn corrupt<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    p_move: &Bound<'py, PyAny>,
    graph: &Bound<'py, PyAny>,
    vocab_size: &Bound<'py, PyAny>,
    seed: &Bound<'py, PyAny>,
    stream: &Bound<'py, PyAny>,
    step: Option<&Bound<'py, PyAny>>,
    seq_offset: Option<&Bound<'py, PyAny>>,
    out: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyArray2<i64>>> {
    let tag = uint(stream, "stream")?;
    let tag = u32::try_from(tag).map_err(|_| KernelError::Value {
        arg: "stream",
        msg: format!("must be an integer in [0, 2**32), got {tag}"),
    })?;
    let c = common(x, graph, vocab_size, seed, step, seq_offset)?;
    let p = c.level(p_move, "p_move")?;
    let out = c.out(out)?;
    let (xr, pr) = (borrow(&c.x, "x")?, borrow(&p, "p_move")?);
    let (xs, ps) = (slice(&xr, "x")?, slice(&pr, "p_move")?);
    let (g, len, k) = (c.graph, c.len, c.key);
    let key = CounterKey::new(k.seed, tag, k.step, k.seq_offset);
    run_tokens(py, (c.batch, len), out, move |os| {
        graphs::corrupt(g, xs, ps, len, key, os)
    })
}

/// One reverse step of kind `kind` ("euler", "analytic" or "denoise"; docs/math.md section 5). `level` is
/// `rate_dt = sigma(t_k) * dt` (euler), `dsigma = sigma_bar(t_k) - sigma_bar(t_k+1)` (analytic) or
/// `sigma = sigma_bar(eps)` (denoise; absorbing never returns MASK).
#[pyfunction]
#[pyo3(signature = (kind, x, log_score, level, graph, vocab_size, seed, step, seq_offset=None, out=None))]
#[allow(clippy::too_many_arguments)]
fn reverse_step<'py>(
    py: Python<'py>,
    kind: &Bound<'py, PyAny>,
    x: &Bound<'py, PyAny>,
    log_score: &Bound<'py, PyAny>,
    level: &Bound<'py, PyAny>,
    graph: &Bound<'py, PyAny>,
    vocab_size: &Bound<'py, PyAny>,
    seed: &Bound<'py, PyAny>,
    step: &Bound<'py, PyAny>,
    seq_offset: Option<&Bound<'py, PyAny>>,
    out: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyArray2<i64>>> {
    let kind = step_kind(kind)?;
    let c = common(x, graph, vocab_size, seed, Some(step), seq_offset)?;
    let (g, len, key) = (c.graph, c.len, c.key);
    c.run_step(py, kind, level, log_score, out, move |xs, lss, lvs, os| {
        steps::reverse_step(kind, g, xs, lss, lvs, len, key, os)
    })
}

/// One reverse step with temperature / top-k / top-p on its proposal distribution (docs/math.md 5.10).
#[pyfunction]
#[pyo3(signature = (kind, x, log_score, level, graph, vocab_size, seed, step, temperature, top_k, top_p, seq_offset=None, out=None))]
#[allow(clippy::too_many_arguments)]
fn proposal_step<'py>(
    py: Python<'py>,
    kind: &Bound<'py, PyAny>,
    x: &Bound<'py, PyAny>,
    log_score: &Bound<'py, PyAny>,
    level: &Bound<'py, PyAny>,
    graph: &Bound<'py, PyAny>,
    vocab_size: &Bound<'py, PyAny>,
    seed: &Bound<'py, PyAny>,
    step: &Bound<'py, PyAny>,
    temperature: f64,
    top_k: Option<usize>,
    top_p: Option<f64>,
    seq_offset: Option<&Bound<'py, PyAny>>,
    out: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyArray2<i64>>> {
    let kind = step_kind(kind)?;
    let tf = Transform::new(temperature, top_k, top_p)?;
    let c = common(x, graph, vocab_size, seed, Some(step), seq_offset)?;
    let (g, len, key) = (c.graph, c.len, c.key);
    c.run_step(py, kind, level, log_score, out, move |xs, lss, lvs, os| {
        proposal::proposal_step(kind, g, xs, lss, lvs, len, key, tf, os)
    })
}

/// Proposals of the unmasking samplers at every MASK position: (tokens [B, L], stats [B, L, 3]).
#[pyfunction]
#[pyo3(signature = (x, log_score, graph, vocab_size, seed, step, temperature, top_k, top_p, seq_offset=None))]
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
fn propose<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    log_score: &Bound<'py, PyAny>,
    graph: &Bound<'py, PyAny>,
    vocab_size: &Bound<'py, PyAny>,
    seed: &Bound<'py, PyAny>,
    step: &Bound<'py, PyAny>,
    temperature: f64,
    top_k: Option<usize>,
    top_p: Option<f64>,
    seq_offset: Option<&Bound<'py, PyAny>>,
) -> PyResult<(Bound<'py, PyArray2<i64>>, Bound<'py, PyArray3<f64>>)> {
    let tf = Transform::new(temperature, top_k, top_p)?;
    let c = common(x, graph, vocab_size, seed, Some(step), seq_offset)?;
    let ls = c.log_score(log_score)?;
    let (xr, sr) = (borrow(&c.x, "x")?, borrow(&ls, "log_score")?);
    let (xs, lss) = (slice(&xr, "x")?, slice(&sr, "log_score")?);
    let (g, batch, len, key) = (c.graph, c.batch, c.len, c.key);
    let (tokens, stats) = run(py, move || {
        let mut tokens = vec![0i64; xs.len()];
        let mut stats = vec![0f64; 3 * xs.len()];
        unmask::propose(g, xs, lss, batch, len, key, tf, &mut tokens, &mut stats)?;
        Ok((tokens, stats))
    })?;
    let internal = |e: numpy::ndarray::ShapeError| {
        PyRuntimeError::new_err(format!("internal shape error: {e}"))
    };
    let t = Array2::from_shape_vec((batch, len), tokens).map_err(internal)?;
    let s = Array3::from_shape_vec((batch, len, 3), stats).map_err(internal)?;
    Ok((
        PyArray2::from_owned_array(py, t),
        PyArray3::from_owned_array(py, s),
    ))
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(corrupt, m)?)?;
    m.add_function(wrap_pyfunction!(reverse_step, m)?)?;
    m.add_function(wrap_pyfunction!(proposal_step, m)?)?;
    m.add_function(wrap_pyfunction!(propose, m)?)?;
    Ok(())
}
