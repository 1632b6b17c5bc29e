//! The one error type of the crate. `python.rs` maps [`KernelError::Type`] onto `TypeError` and every
//! other variant onto `ValueError`; each message names the argument at fault.

use std::fmt;

/// Why a kernel refused its input. Kernels never panic on user input; they return one of these.
#[derive(Debug, Clone, PartialEq)]
pub enum KernelError {
    /// An argument of the wrong Python / NumPy type or dtype (only raised by the bindings).
    Type { arg: &'static str, msg: String },
    /// An argument of the wrong rank, shape or memory layout.
    Shape { arg: &'static str, msg: String },
    /// A token id outside the graph's states.
    TokenOutOfRange {
        arg: &'static str,
        b: usize,
        i: usize,
        token: i64,
        allowed: String,
    },
    /// A NaN or +inf log-score at a row the kernel reads (-inf is allowed: probability 0).
    NonFiniteLogScore {
        b: usize,
        i: usize,
        y: usize,
        value: f32,
    },
    /// A position whose step has no state of positive probability to move to (the absorbing denoising
    /// step at a MASK whose every real token has log-score -inf).
    NoMass { b: usize, i: usize },
    /// A negative, NaN or infinite noise level.
    BadNoise {
        arg: &'static str,
        b: usize,
        value: f64,
    },
    /// Any other invalid scalar argument (for example `vocab_size < 1`).
    Value { arg: &'static str, msg: String },
}

impl KernelError {
    /// True when the error should surface in Python as `TypeError` (otherwise `ValueError`).
    pub fn is_type_error(&self) -> bool {
        matches!(self, KernelError::Type { .. })
    }
}

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelError::Type { arg, msg }
            | KernelError::Shape { arg, msg }
            | KernelError::Value { arg, msg } => {
                write!(f, "{arg}: {msg}")
            }
            KernelError::TokenOutOfRange {
                arg,
                b,
                i,
                token,
                allowed,
            } => write!(
                f,
                "{arg}: token id {token} at [{b}, {i}] is out of range; {allowed}"
            ),
            KernelError::NonFiniteLogScore { b, i, y, value } => write!(
                f,
                "log_score: non-finite value {value} at [{b}, {i}, {y}]; log-scores must not be NaN or +inf \
                 (-inf is allowed and means probability 0)"
            ),
            KernelError::NoMass { b, i } => write!(
                f,
                "log_score: every real token at [{b}, {i}] has log-score -inf, so the denoising step \
                 has no token to move to"
            ),
            KernelError::BadNoise { arg, b, value } => write!(
                f,
                "{arg}: noise level {value} at [{b}] must be finite and non-negative"
            ),
        }
    }
}

impl std::error::Error for KernelError {}
