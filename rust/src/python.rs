//! PyO3 bindings: argument checks, error mapping and GIL release only; no math here.
//!
//! Every array is checked before it is borrowed: exact dtype (nothing is cast), rank, shape against the
//! other arguments and the graph, C-contiguity and alignment. Inputs are borrowed read-only in place;
//! the kernel runs with the GIL released inside the process's rayon pool (`threads.rs`); a new result
//! is handed to NumPy without a copy, or written into `out`.

use numpy::ndarray::{Array2, Dimension};
use numpy::prelude::*;
use numpy::{dtype, Element, PyArray, PyArray1, PyArray2, PyArray3, PyUntypedArray};
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyInt, PyString};

use crate::error::KernelError;
use crate::graphs::{self, Graph};
use crate::keyed::CounterKey;
use crate::rng::RngKey;
use crate::steps::{self, StepKind};
use crate::threads;

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

/// The graph from `absorbing` (a bool) and `vocab_size` (an int >= 1).
fn graph(
    absorbing: &Bound<'_, PyAny>,
    vocab_size: &Bound<'_, PyAny>,
) -> Result<Graph, KernelError> {
    let absorbing = absorbing.extract::<bool>().map_err(|_| {
        type_err(
            "absorbing",
            format!("expected a bool, got {}", absorbing.get_type()),
        )
    })?;
    let n = uint(vocab_size, "vocab_size")?;
    let n = usize::try_from(n).map_err(|_| KernelError::Value {
        arg: "vocab_size",
        msg: format!("too large: {n}"),
    })?;
    Graph::new(absorbing, n)
}

/// The checked arguments shared by every kernel.
struct Common<'py> {
    graph: Graph,
    x: Bound<'py, PyArray2<i64>>,
    level: Bound<'py, PyArray1<f64>>,
    key: RngKey,
    out: Option<Bound<'py, PyArray2<i64>>>,
    batch: usize,
    len: usize,
}

#[allow(clippy::too_many_arguments)]
fn common<'py>(
    x: &Bound<'py, PyAny>,
    level: &Bound<'py, PyAny>,
    level_arg: &'static str,
    absorbing: &Bound<'py, PyAny>,
    vocab_size: &Bound<'py, PyAny>,
    seed: &Bound<'py, PyAny>,
    step: &Bound<'py, PyAny>,
    seq_offset: &Bound<'py, PyAny>,
    out: Option<&Bound<'py, PyAny>>,
) -> Result<Common<'py>, KernelError> {
    let graph = graph(absorbing, vocab_size)?;
    let key = RngKey::new(
        uint(seed, "seed")?,
        uint(step, "step")?,
        uint(seq_offset, "seq_offset")?,
    );
    let x = checked_array::<i64, _>(x, "x", "int64", "[B, L]")?;
    let level = checked_array::<f64, _>(level, level_arg, "float64", "[B]")?;
    let (batch, len) = (x.shape()[0], x.shape()[1]);
    if level.shape()[0] != batch {
        return Err(shape_err(
            level_arg,
            format!(
                "expected shape [B] = [{batch}] (B from x), got [{}]",
                level.shape()[0]
            ),
        ));
    }
    let out = match out {
        None => None,
        Some(o) if o.is_none() => None,
        Some(o) => {
            let o = checked_array::<i64, _>(o, "out", "int64", "[B, L]")?;
            if o.shape() != x.shape() {
                return Err(shape_err(
                    "out",
                    format!(
                        "expected shape {:?} (the shape of x), got {:?}",
                        x.shape(),
                        o.shape()
                    ),
                ));
            }
            Some(o)
        }
    };
    Ok(Common {
        graph,
        x,
        level,
        key,
        out,
        batch,
        len,
    })
}

/// Runs `kernel(x, level, out)` without the GIL in the rayon pool, writing into `out` or a new array.
fn run<'py, F>(py: Python<'py>, c: Common<'py>, kernel: F) -> PyResult<Bound<'py, PyArray2<i64>>>
where
    F: FnOnce(&[i64], &[f64], &mut [i64]) -> Result<(), KernelError> + Send,
{
    let pool = threads::pool().map_err(PyRuntimeError::new_err)?;
    let xr =
        c.x.try_readonly()
            .map_err(|e| shape_err("x", format!("cannot be borrowed: {e}")))?;
    let lr = c
        .level
        .try_readonly()
        .map_err(|e| shape_err("level", format!("cannot be borrowed: {e}")))?;
    let xs = xr.as_slice().map_err(|e| shape_err("x", e.to_string()))?;
    let ls = lr
        .as_slice()
        .map_err(|e| shape_err("level", e.to_string()))?;
    match c.out {
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
                py.detach(|| pool.install(|| kernel(xs, ls, os)))?;
            }
            Ok(out)
        }
        None => {
            let mut v = vec![0i64; xs.len()];
            py.detach(|| pool.install(|| kernel(xs, ls, &mut v)))?;
            let a = Array2::from_shape_vec((c.batch, c.len), v)
                .map_err(|e| PyRuntimeError::new_err(format!("internal shape error: {e}")))?;
            Ok(PyArray2::from_owned_array(py, a))
        }
    }
}

/// Forward corruption x_sigma ~ p_sigma|0(. | x) (docs/math.md section 2), keyed as the torch twin: `p_move` is
/// 1 - e^{-sigma} per sequence, `stream` the 32-bit stream tag of the key.
#[pyfunction]
#[pyo3(signature = (x, p_move, absorbing, vocab_size, seed, stream, step=None, seq_offset=None, out=None))]
#[allow(clippy::too_many_arguments)]
fn corrupt<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    p_move: &Bound<'py, PyAny>,
    absorbing: &Bound<'py, PyAny>,
    vocab_size: &Bound<'py, PyAny>,
    seed: &Bound<'py, PyAny>,
    stream: &Bound<'py, PyAny>,
    step: Option<&Bound<'py, PyAny>>,
    seq_offset: Option<&Bound<'py, PyAny>>,
    out: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyArray2<i64>>> {
    let zero = 0u64.into_pyobject(py)?.into_any();
    let tag = uint(stream, "stream")?;
    let tag = u32::try_from(tag).map_err(|_| KernelError::Value {
        arg: "stream",
        msg: format!("must be an integer in [0, 2**32), got {tag}"),
    })?;
    let c = common(
        x,
        p_move,
        "p_move",
        absorbing,
        vocab_size,
        seed,
        step.unwrap_or(&zero),
        seq_offset.unwrap_or(&zero),
        out,
    )?;
    let (graph, len) = (c.graph, c.len);
    let key = CounterKey::new(c.key.seed, tag, c.key.step, c.key.seq_offset);
    run(py, c, move |xs, ps, os| {
        graphs::corrupt(graph, xs, ps, len, key, os)
    })
}

/// The step named by `kind`: TypeError for a non-string, ValueError naming `kind` for an unknown name.
fn step_kind(kind: &Bound<'_, PyAny>) -> Result<StepKind, KernelError> {
    let name = kind.cast::<PyString>().map_err(|_| {
        type_err(
            "kind",
            format!(
                "expected a str ('euler', 'analytic' or 'denoise'), got {}",
                kind.get_type()
            ),
        )
    })?;
    StepKind::from_name(&name.to_cow().map_err(|e| type_err("kind", e.to_string()))?)
}

/// One reverse step of kind `kind` ("euler", "analytic" or "denoise"; docs/math.md section 5). `level` is
/// `rate_dt = sigma(t_k) * dt` (euler), `dsigma = sigma_bar(t_k) - sigma_bar(t_k+1)` (analytic) or
/// `sigma = sigma_bar(eps)` (denoise; absorbing never returns MASK).
#[pyfunction]
#[pyo3(signature = (kind, x, log_score, level, absorbing, vocab_size, seed, step, seq_offset=None, out=None))]
#[allow(clippy::too_many_arguments)]
fn reverse_step<'py>(
    py: Python<'py>,
    kind: &Bound<'py, PyAny>,
    x: &Bound<'py, PyAny>,
    log_score: &Bound<'py, PyAny>,
    level: &Bound<'py, PyAny>,
    absorbing: &Bound<'py, PyAny>,
    vocab_size: &Bound<'py, PyAny>,
    seed: &Bound<'py, PyAny>,
    step: &Bound<'py, PyAny>,
    seq_offset: Option<&Bound<'py, PyAny>>,
    out: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyArray2<i64>>> {
    let kind = step_kind(kind)?;
    let zero = 0u64.into_pyobject(py)?.into_any();
    let c = common(
        x,
        level,
        kind.level_arg(),
        absorbing,
        vocab_size,
        seed,
        step,
        seq_offset.unwrap_or(&zero),
        out,
    )?;
    let dim = c.graph.dim();
    let ls = checked_array::<f32, _>(log_score, "log_score", "float32", "[B, L, dim]")
        .map_err(PyErr::from)?;
    let ls: Bound<'py, PyArray3<f32>> = ls;
    let sh = ls.shape();
    if sh[0] != c.batch || sh[1] != c.len {
        return Err(shape_err(
            "log_score",
            format!(
                "expected shape [B, L, dim] with [B, L] = {:?} from x, got {sh:?}",
                [c.batch, c.len]
            ),
        )
        .into());
    }
    if sh[2] != dim {
        let what = if c.graph.absorbing {
            format!(
                "the absorbing graph with vocab_size {} has dim = vocab_size + 1 = {dim}",
                c.graph.vocab_size
            )
        } else {
            format!(
                "the uniform graph with vocab_size {} has dim = vocab_size = {dim}",
                c.graph.vocab_size
            )
        };
        return Err(shape_err("log_score", format!("last dim is {}, but {what}", sh[2])).into());
    }
    let lr = ls
        .try_readonly()
        .map_err(|e| PyErr::from(shape_err("log_score", format!("cannot be borrowed: {e}"))))?;
    let lss = lr
        .as_slice()
        .map_err(|e| PyErr::from(shape_err("log_score", e.to_string())))?;
    let (graph, key, len) = (c.graph, c.key, c.len);
    run(py, c, move |xs, lv, os| {
        steps::reverse_step(kind, graph, xs, lss, lv, len, key, os)
    })
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(corrupt, m)?)?;
    m.add_function(wrap_pyfunction!(reverse_step, m)?)?;
    register_samplers(m)?;
    Ok(())
}

// ---- issue 14: the proposal transform and the samplers built on it ----------------------------------

/// The log-score array `[B, L, dim]` of a kernel call, checked against `c` and the graph.
fn checked_log_score<'py>(
    log_score: &Bound<'py, PyAny>,
    c: &Common<'py>,
) -> Result<Bound<'py, PyArray3<f32>>, KernelError> {
    let ls: Bound<'py, PyArray3<f32>> =
        checked_array::<f32, _>(log_score, "log_score", "float32", "[B, L, dim]")?;
    let sh = ls.shape();
    if sh[0] != c.batch || sh[1] != c.len || sh[2] != c.graph.dim() {
        return Err(shape_err(
            "log_score",
            format!(
                "expected shape [B, L, dim] = {:?} (from x and the graph), got {sh:?}",
                [c.batch, c.len, c.graph.dim()]
            ),
        ));
    }
    Ok(ls)
}

/// One reverse step with temperature / top-k / top-p on its proposal distribution (docs/math.md 5.10).
#[pyfunction]
#[pyo3(signature = (kind, x, log_score, level, absorbing, vocab_size, seed, step, temperature, top_k, top_p, seq_offset=None, out=None))]
#[allow(clippy::too_many_arguments)]
fn proposal_step<'py>(
    py: Python<'py>,
    kind: &Bound<'py, PyAny>,
    x: &Bound<'py, PyAny>,
    log_score: &Bound<'py, PyAny>,
    level: &Bound<'py, PyAny>,
    absorbing: &Bound<'py, PyAny>,
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
    let tf = crate::proposal::Transform::new(temperature, top_k, top_p)?;
    let zero = 0u64.into_pyobject(py)?.into_any();
    let c = common(
        x,
        level,
        kind.level_arg(),
        absorbing,
        vocab_size,
        seed,
        step,
        seq_offset.unwrap_or(&zero),
        out,
    )?;
    let ls = checked_log_score(log_score, &c)?;
    let lr = ls
        .try_readonly()
        .map_err(|e| PyErr::from(shape_err("log_score", format!("cannot be borrowed: {e}"))))?;
    let lss = lr
        .as_slice()
        .map_err(|e| PyErr::from(shape_err("log_score", e.to_string())))?;
    let (graph, key, len) = (c.graph, c.key, c.len);
    run(py, c, move |xs, lv, os| {
        crate::proposal::proposal_step(kind, graph, xs, lss, lv, len, key, tf, os)
    })
}

/// Proposals of the unmasking samplers at every MASK position: (tokens [B, L], stats [B, L, 3]).
#[pyfunction]
#[pyo3(signature = (x, log_score, absorbing, vocab_size, seed, step, temperature, top_k, top_p, seq_offset=None))]
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
fn propose<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    log_score: &Bound<'py, PyAny>,
    absorbing: &Bound<'py, PyAny>,
    vocab_size: &Bound<'py, PyAny>,
    seed: &Bound<'py, PyAny>,
    step: &Bound<'py, PyAny>,
    temperature: f64,
    top_k: Option<usize>,
    top_p: Option<f64>,
    seq_offset: Option<&Bound<'py, PyAny>>,
) -> PyResult<(Bound<'py, PyArray2<i64>>, Bound<'py, PyArray3<f64>>)> {
    let tf = crate::proposal::Transform::new(temperature, top_k, top_p)?;
    let graph = graph(absorbing, vocab_size)?;
    let key = RngKey::new(
        uint(seed, "seed")?,
        uint(step, "step")?,
        match seq_offset {
            Some(o) => uint(o, "seq_offset")?,
            None => 0,
        },
    );
    let x = checked_array::<i64, numpy::Ix2>(x, "x", "int64", "[B, L]")?;
    let (batch, len) = (x.shape()[0], x.shape()[1]);
    let ls: Bound<'py, PyArray3<f32>> =
        checked_array::<f32, _>(log_score, "log_score", "float32", "[B, L, dim]")?;
    if ls.shape() != [batch, len, graph.dim()] {
        return Err(shape_err(
            "log_score",
            format!(
                "expected shape [B, L, dim] = {:?}, got {:?}",
                [batch, len, graph.dim()],
                ls.shape()
            ),
        )
        .into());
    }
    let pool = threads::pool().map_err(PyRuntimeError::new_err)?;
    let xr = x
        .try_readonly()
        .map_err(|e| PyErr::from(shape_err("x", format!("cannot be borrowed: {e}"))))?;
    let lr = ls
        .try_readonly()
        .map_err(|e| PyErr::from(shape_err("log_score", format!("cannot be borrowed: {e}"))))?;
    let xs = xr
        .as_slice()
        .map_err(|e| PyErr::from(shape_err("x", e.to_string())))?;
    let lss = lr
        .as_slice()
        .map_err(|e| PyErr::from(shape_err("log_score", e.to_string())))?;
    let mut tokens = vec![0i64; xs.len()];
    let mut stats = vec![0f64; 3 * xs.len()];
    py.detach(|| {
        pool.install(|| {
            crate::unmask::propose(graph, xs, lss, batch, len, key, tf, &mut tokens, &mut stats)
        })
    })?;
    let t = Array2::from_shape_vec((batch, len), tokens)
        .map_err(|e| PyRuntimeError::new_err(format!("internal shape error: {e}")))?;
    let s = numpy::ndarray::Array3::from_shape_vec((batch, len, 3), stats)
        .map_err(|e| PyRuntimeError::new_err(format!("internal shape error: {e}")))?;
    Ok((
        PyArray2::from_owned_array(py, t),
        PyArray3::from_owned_array(py, s),
    ))
}

fn register_samplers(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(proposal_step, m)?)?;
    m.add_function(wrap_pyfunction!(propose, m)?)?;
    Ok(())
}
