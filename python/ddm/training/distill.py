"""Few-step sampling by distillation: SDTT, self-distillation through time (Deschenaux & Gulcehre 2024,
arXiv 2410.21035), for absorbing models (docs/math.md section 13).

`distill(teacher, config)` trains a student that takes one analytic step of size `2 dt` where its teacher
takes two of size `dt`. The student starts as a copy of the teacher. A training step draws clean blocks of
the teacher's data at keyed offsets, a time `t` in `[2 dt, 1]` and the forward corruption `x_t` (both
keyed by `(seed, step, row)`), and minimises, over the positions masked in `x_t`, a divergence between the
student's one-step law `p_S(x_{t-2dt} | x_t)` and the teacher's two-step law (reverse KL by default,
forward KL or total variation). After each round the student becomes the teacher and `dt` doubles, so `R`
rounds take a `1 / dt_0`-step teacher to a `1 / (2^R dt_0)`-step student.

The run is a run directory like training's (`ddm.io.run`): `checkpoints/step_XXXXXXXX/` (the student;
an ordinary checkpoint that `ddm.load` reads and every predictor samples, with its teacher and intended
step count under `"distill"` in `config.json`), `teachers/round_RR/` (each round's teacher, so that a
resumed round has it) and `log.jsonl`. The student runs without dropout and every draw is keyed, so a
killed and resumed distillation gives the same weights as an uninterrupted one, and a step's batch and
noise do not depend on how the batch is split (`grad_accum`).
"""

from __future__ import annotations

import copy
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ddm import _rng
from ddm._categorical import inverse_cdf
from ddm._device import resolve_device
from ddm.data import Corpus, load_corpus
from ddm.errors import CheckpointError, DivergenceError, InvalidArgument
from ddm.io import checkpoint as ckpt
from ddm.io import run
from ddm.io.load import load as load_any
from ddm.io.rundata import cached_tokens
from ddm.model import ScoreModel
from ddm.training.callbacks import JsonlLog
from ddm.training.trainer import _Interrupt, say  # the Ctrl-C seam training's loop uses

__all__ = ["LOSSES", "DistillConfig", "distill", "sdtt_loss", "step_law", "teacher_two_step_law"]

LOSSES = ("reverse_kl", "forward_kl", "tvd")
STREAM_TIME = _rng.STREAMS["distill_time"]
STREAM_CORRUPT = _rng.STREAMS["distill_corrupt"]
STREAM_TEACHER = _rng.STREAMS["distill_teacher_step"]
_U64 = (1 << 64) - 1
_TINY = 1e-300  # the floor of a probability inside a log (float64)
# Fields that define the student: a resumed run must keep them.
_RESUME_FIELDS = (
    "rounds", "steps_per_round", "teacher_steps", "dt_schedule", "loss", "lr", "warmup_steps", "batch_size",
    "seq_len", "grad_clip", "seed", "data",
)  # fmt: skip


def _f(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class DistillConfig:
    """What a distillation run does; each field's help is in its metadata (`ddm distill --FIELD`)."""

    run_dir: str = _f(
        "runs/distill", "run directory: student checkpoints, the teachers of the rounds, the log"
    )
    rounds: int = _f(3, "SDTT rounds, >= 1; each halves the student's step count (SDTT: 7)")
    steps_per_round: int = _f(500, "optimizer steps per round (SDTT: 10k); 0 leaves the student the teacher")
    teacher_steps: int = _f(128, "the first teacher's step count: dt_0 = 1 / teacher_steps (SDTT: 1024)")
    dt_schedule: tuple[float, ...] = _f(
        (), "the teacher's step size dt of each round (one per round, 2 dt in (0, 1]); empty: dt doubles"
    )
    loss: str = _f("reverse_kl", "'reverse_kl' (KL(student || teacher), SDTT's best), 'forward_kl' or 'tvd'")
    lr: float = _f(6e-5, "AdamW learning rate, constant after the warm-up (SDTT: 6e-5)")
    warmup_steps: int = _f(0, "linear learning-rate warm-up at the start of each round")
    batch_size: int = _f(16, "sequences per optimizer step")
    grad_accum: int = _f(1, "micro-batches per step (the same batch and noise, split)")
    seq_len: int = _f(0, "tokens per sequence (0: the teacher's)")
    grad_clip: float = _f(1.0, "clip the gradient norm to this (0: off)")
    seed: int = _f(0, "keys the data offsets, the times, the corruption and the teacher's draws")
    data: str = _f("", "training data (as ddm train's --data); '': the teacher's own (its cached tokens)")
    save_every: int = _f(100, "optimizer steps between checkpoints (and one at the end of each round)")
    keep_checkpoints: int = _f(2, "how many recent student checkpoints to keep")
    log_every: int = _f(10, "steps between lines of the log (log.jsonl)")
    progress: bool = _f(True, "progress on stderr: a bar with an ETA on a terminal, else a line per log line")
    device: str = _f("cpu", "'cpu', 'cuda', 'cuda:N' or 'auto'")

    def __post_init__(self) -> None:
        object.__setattr__(self, "dt_schedule", tuple(float(d) for d in self.dt_schedule))
        self.validate()

    def validate(self) -> None:
        """Raises `InvalidArgument` naming the first bad field."""
        if not isinstance(self.rounds, int) or self.rounds < 1:
            raise InvalidArgument(f"rounds must be an integer >= 1, got {self.rounds!r}")
        for name in ("steps_per_round", "warmup_steps", "seq_len"):
            if getattr(self, name) < 0:
                raise InvalidArgument(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in (
            "teacher_steps",
            "batch_size",
            "grad_accum",
            "save_every",
            "keep_checkpoints",
            "log_every",
        ):
            if getattr(self, name) < 1:
                raise InvalidArgument(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.batch_size % self.grad_accum:
            raise InvalidArgument(
                f"batch_size ({self.batch_size}) must be divisible by grad_accum ({self.grad_accum})"
            )
        if self.loss not in LOSSES:
            raise InvalidArgument(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if not self.lr > 0 or self.grad_clip < 0:
            raise InvalidArgument(
                f"lr must be > 0 and grad_clip >= 0, got lr={self.lr!r}, grad_clip={self.grad_clip!r}"
            )
        if self.dt_schedule and len(self.dt_schedule) != self.rounds:
            raise InvalidArgument(
                f"dt_schedule has {len(self.dt_schedule)} values for {self.rounds} rounds: give one per round"
            )
        for r, dt in enumerate(self.dts()):
            if not (0.0 < dt and 2.0 * dt <= 1.0):
                raise InvalidArgument(
                    f"the dt schedule leaves [0, 1]: round {r} has dt = {dt!r}, and its student step 2 dt "
                    f"must lie in (0, 1]; lower rounds (a student of {self.teacher_steps} / 2^rounds steps "
                    "needs at least one step) or fix dt_schedule"
                )

    def dts(self) -> tuple[float, ...]:
        """The teacher's step size of each round (the student's is twice it)."""
        if self.dt_schedule:
            return self.dt_schedule
        return tuple(2.0**r / self.teacher_steps for r in range(self.rounds))

    def student_steps(self) -> int:
        """The step count the final student is trained for: `1 / (2 dt)` of the last round."""
        return max(1, round(1.0 / (2.0 * self.dts()[-1])))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields."""
        d = asdict(self)
        d["dt_schedule"] = list(self.dt_schedule)
        return d


# ---------------------------------------------------------------------------------------------------
# The laws (docs/math.md section 13)
# ---------------------------------------------------------------------------------------------------


def step_law(log_score: torch.Tensor, dsigma: torch.Tensor) -> torch.Tensor:
    """The analytic step's law at a MASK position of the absorbing graph, differentiable, float64.

    `p(y) = (e^d - 1) s_y` for a real token `y` and `p(MASK) = 1 - sum_y p(y)` (SEDD eq. 19, the
    absorbing case; `ddm.sampling.torch_steps.analytic_step_probs` draws from the same law), clipped at
    0 and renormalised.

    Args:
        log_score: `[b, L, dim]` log-scores (MASK last, as `Absorbing` numbers it).
        dsigma: `[b]` the step's `sigma_bar(t) - sigma_bar(s)`.

    Returns:
        `[b, L, dim]` float64 probabilities (meaningful at MASK positions).
    """
    l = log_score[..., :-1].to(torch.float64)  # (b, L, N)
    log_scale = torch.log(torch.expm1(dsigma.to(torch.float64)))[:, None, None]  # (b, 1, 1)
    unmask = torch.exp(l + log_scale)
    stay = (1.0 - unmask.sum(-1, keepdim=True)).clamp_min(0.0)
    probs = torch.cat([unmask, stay], dim=-1)
    return probs / probs.sum(-1, keepdim=True)


def teacher_two_step_law(
    teacher: Any, x_t: torch.Tensor, sigmas: tuple[torch.Tensor, torch.Tensor, torch.Tensor], u: torch.Tensor
) -> torch.Tensor:
    """The teacher's law of `x_{t-2dt}` at each position given `x_t`, after two analytic steps of `dt`.

    Position i's own first step is summed out exactly: its law is `a_i + m_i r_i`, where `a_i` (unmask)
    and `m_i` (stay masked) are the teacher's first-step law at `x_t`, and `r_i` is the teacher's
    second-step law given the context `z` drawn from the first step (the draw inverts the first-step law
    at the uniforms `u`). Where `z` unmasked position i itself, the teacher at `z` says nothing about i
    (the absorbing chain keeps it), and `r_i` is taken at `x_t`: `a_i + m_i r_i` is then the teacher's
    one `2dt` step at `x_t`. For a teacher whose posteriors do not depend on the context (a product law)
    the result is the teacher's `2dt` law exactly (docs/math.md section 13).

    Args:
        teacher: the score model (no gradients are taken).
        x_t: int64 `[b, L]`.
        sigmas: `(sigma_bar(t), sigma_bar(t - dt), sigma_bar(t - 2dt))`, each `[b]` float64.
        u: float64 uniforms `[b, L]` for the first step's draw.

    Returns:
        float64 `[b, L, dim]`.
    """
    s0, s1, s2 = sigmas
    mask_id = x_t.new_tensor(teacher.graph.dim - 1)
    with torch.no_grad():
        l0 = teacher(x_t, s0.to(torch.get_default_dtype()))
        first = step_law(l0, s0 - s1)  # (b, L, dim)
        masked = x_t == mask_id
        z = torch.where(masked, inverse_cdf(first, u), x_t)
        second = step_law(teacher(z, s1.to(torch.get_default_dtype())), s1 - s2)
        stay = first[..., -1:]
        unmask = torch.cat([first[..., :-1], torch.zeros_like(stay)], dim=-1)
        two = unmask + stay * second
        direct = step_law(l0, s0 - s2)  # where z unmasked i: no context update for i
        return torch.where((z == mask_id)[..., None], two, direct)


def divergence(kind: str, student: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-position divergence `[b, L]` between the student's law and the teacher's (float64)."""
    if kind == "reverse_kl":
        # not xlogy(p, p): its gradient at p = 0 (a clipped step law) is -inf, and NaN after the product
        return (student * (torch.log(student.clamp_min(_TINY)) - torch.log(target.clamp_min(_TINY)))).sum(-1)
    if kind == "forward_kl":
        return (torch.xlogy(target, target) - target * torch.log(student.clamp_min(_TINY))).sum(-1)
    if kind == "tvd":
        return 0.5 * (student - target).abs().sum(-1)
    raise InvalidArgument(f"loss must be one of {LOSSES}, got {kind!r}")


def keyed_draws(
    graph: Any, schedule: Any, x0: torch.Tensor, *, seed: int, step: int, rows: torch.Tensor, dt: float
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], torch.Tensor]:
    """`(x_t, (sigma_bar(t), sigma_bar(t-dt), sigma_bar(t-2dt)), u)` of the rows `rows` of step `step`:
    `t ~ U[2dt, 1]`, `x_t` the forward corruption of `x0` and `u` the uniforms of the teacher's first
    step, each keyed by `(seed, stream, step, row)`."""
    seed &= _U64
    rows = rows.to(torch.int64)
    length = x0.shape[1]
    t = 2.0 * dt + (1.0 - 2.0 * dt) * _rng.uniforms(seed, STREAM_TIME, step, rows, 1)[:, 0]  # (b,) f64
    ts = (t, (t - dt).clamp_min(0.0), (t - 2.0 * dt).clamp_min(0.0))
    # the levels the networks see (float32), kept in float64 so that the steps' dsigma match them exactly
    dtype = torch.get_default_dtype()
    sigmas = tuple(schedule.total_noise(s).to(dtype).to(torch.float64) for s in ts)
    u_c = _rng.uniforms(seed, STREAM_CORRUPT, step, rows, length)
    x_t = graph.corrupt(x0, sigmas[0][:, None], u_c)
    u = _rng.uniforms(seed, STREAM_TEACHER, step, rows, length)
    return x_t, sigmas, u


def sdtt_loss(
    student: Any,
    teacher: Any,
    x0: torch.Tensor,
    *,
    seed: int,
    step: int,
    rows: torch.Tensor,
    dt: float,
    loss: str,
) -> torch.Tensor:
    """Per-sequence SDTT loss `[b]` (nats per token): the divergence between the student's one step of
    `2 dt` and the teacher's two steps of `dt`, summed over the positions masked in `x_t`, over `L`."""
    x_t, sigmas, u = keyed_draws(student.graph, student.schedule, x0, seed=seed, step=step, rows=rows, dt=dt)
    target = teacher_two_step_law(teacher, x_t, sigmas, u)
    p_s = step_law(student(x_t, sigmas[0].to(torch.get_default_dtype())), sigmas[0] - sigmas[2])
    per_pos = divergence(loss, p_s, target)  # (b, L)
    masked = x_t == student.graph.dim - 1
    return torch.where(masked, per_pos, torch.zeros_like(per_pos)).sum(-1) / x0.shape[1]


# ---------------------------------------------------------------------------------------------------
# The teacher, the student, the data
# ---------------------------------------------------------------------------------------------------


def _load_teacher(teacher: Any) -> tuple[ScoreModel, dict[str, Any] | None, str]:
    """The teacher model, its checkpoint config (None without one: a Hub, SEDD or in-memory model) and
    how to name it."""
    if isinstance(teacher, torch.nn.Module):
        model, name = teacher, str(getattr(teacher, "checkpoint_path", None) or "<in-memory model>")
    else:
        try:
            model = load_any(teacher)
        except (CheckpointError, FileNotFoundError, OSError, ValueError, KeyError) as e:
            raise CheckpointError(f"distill: the teacher {str(teacher)!r} does not load: {e}") from e
        name = str(teacher)
    path = getattr(model, "checkpoint_path", None)
    try:
        cfg = ckpt.read_config(path) if path is not None else None
    except (CheckpointError, FileNotFoundError, OSError):
        cfg = None  # a Hub / SEDD layout: its config is rebuilt from the model
    return model, cfg, name


def check_teacher(model: Any) -> None:
    """Refuses a model SDTT cannot distil: not a score model, not absorbing, or a block model."""
    graph = getattr(model, "graph", None)
    if not isinstance(model, ScoreModel) or graph is None:
        raise InvalidArgument(
            f"distill: the teacher must be a diffusion ScoreModel, got {type(model).__name__}"
        )
    if not graph.absorbing or getattr(graph, "mask_id", None) != graph.dim - 1:
        raise InvalidArgument(
            f"distill: SDTT is an absorbing-only method, and the teacher's graph is {graph!r}; distil a "
            "masked (absorbing) model, or train one with graph = 'absorbing'"
        )
    if getattr(model, "block_size", 0) or getattr(model.config, "block_size", 0):
        raise InvalidArgument("distill: block models are not supported yet (their steps are per block)")


def check_student(student: Any, teacher: Any) -> None:
    """A given initial student must share the teacher's graph, vocabulary and schedule."""
    if not isinstance(student, ScoreModel):
        raise InvalidArgument(f"distill: the student must be a ScoreModel, got {type(student).__name__}")
    if student.graph != teacher.graph:
        raise InvalidArgument(
            f"distill: the student's graph {student.graph!r} differs from the teacher's {teacher.graph!r} "
            "(vocabulary and graph must match); start from the teacher (student=None)"
        )
    if student.schedule.to_config() != teacher.schedule.to_config():
        raise InvalidArgument(
            f"distill: the student's schedule {student.schedule.to_config()} differs from the teacher's "
            f"{teacher.schedule.to_config()}"
        )


def _model_config(model: ScoreModel, saved: dict[str, Any] | None) -> dict[str, Any]:
    """The `config.json` content of a checkpoint of `model` (the teacher's, where it has one)."""
    out = {
        "objective": "masked" if model.config.subs else "diffusion",
        "model": model.config.to_dict(),
        "graph": model.graph.to_config(),
        "schedule": model.schedule.to_config(),
        "tokenizer": model.tokenizer.to_config() if getattr(model, "tokenizer", None) else None,
    }
    for key in ("train", "data"):
        if saved and key in saved:
            out[key] = saved[key]
    return out


def _corpus(config: DistillConfig, teacher: ScoreModel, saved: dict[str, Any] | None, run_dir: Path) -> Any:
    train = (saved or {}).get("train") or {}
    data = config.data or train.get("data")
    if not data:
        raise InvalidArgument(
            "distill: the teacher records no training data (a Hub, SEDD or in-memory model): give data="
        )
    if getattr(teacher, "tokenizer", None) is None:
        raise InvalidArgument("distill: the teacher has no tokenizer, so its data cannot be tokenized")
    teacher_run = (
        run.run_dir_of(teacher.checkpoint_path) if getattr(teacher, "checkpoint_path", None) else None
    )
    cache = cached_tokens(teacher_run) if teacher_run is not None and not config.data else None
    if cache is not None and cache.tokenizer == teacher.tokenizer.to_config():  # the teacher's own tokens
        return Corpus(cache.open(), teacher.tokenizer, train.get("val_fraction", 0.1))
    options = {k: train[k] for k in ("val_fraction", "text_field", "unknown") if k in train}
    if train.get("separator"):
        options["separator"] = train["separator"]
    return load_corpus(data, run_dir / "data", tokenizer=teacher.tokenizer.to_config(), **options)


# ---------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------


class _Progress:
    """A bar with an ETA on a terminal (tqdm), else one line per log record with an ETA."""

    def __init__(self, enabled: bool, total: int, start: int) -> None:
        self.enabled, self.total, self.start = enabled, total, start
        self.t0 = time.perf_counter()
        self.bar: Any = None
        if enabled and sys.stderr.isatty() and start < total:
            from tqdm.auto import tqdm  # on demand: tqdm.auto probes for a notebook when imported

            self.bar = tqdm(total=total, initial=start, desc="distill", unit="step", dynamic_ncols=True)

    def update(self, record: dict[str, Any], step: int) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(round=record["round"] + 1, loss=f"{record['loss']:.4f}", refresh=False)
            return
        done = step - self.start
        eta = (time.perf_counter() - self.t0) / max(done, 1) * (self.total - step)
        say(
            f"ddm distill: step {step}/{self.total} (round {record['round'] + 1}, student step 2dt = "
            f"{2 * record['dt']:.4g}): loss {record['loss']:.5f} nats/token, ETA {eta:,.0f} s"
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _Run:
    """One distillation run: the student, the current round's teacher, the optimizer, the data."""

    def __init__(self, teacher: Any, config: DistillConfig, student: Any, resume: bool) -> None:
        self.cfg = config
        self.run_dir = Path(config.run_dir)
        self.device = resolve_device(config.device)
        model, saved, self.teacher_name = _load_teacher(teacher)
        check_teacher(model)
        if student is not None:
            check_student(student, model)
        self.teacher0 = model.to(self.device).eval()
        self.student = copy.deepcopy(student if student is not None else model).to(self.device).eval()
        self.seq_len = config.seq_len or model.seq_len
        self.corpus = _corpus(config, model, saved, self.run_dir)
        self.corpus.check_seq_len(self.seq_len)
        self.ckpt_config = _model_config(model, saved)
        self.ckpt_config["distill"] = {
            "method": "sdtt",
            "teacher": self.teacher_name,
            "teacher_steps": round(1.0 / config.dts()[0]),
            "student_steps": config.student_steps(),
            "config": config.to_dict(),
        }
        self.step = 0
        self.optimizer_state: dict[str, Any] | None = None
        found = ckpt.latest(self.run_dir)
        if found is not None and not resume:
            raise InvalidArgument(
                f"distill: run directory {str(self.run_dir)!r} already has checkpoints: resume=True "
                "(--resume) continues it, or choose another run_dir"
            )
        if resume and found is not None:
            self._restore(found)
        self.total = config.rounds * config.steps_per_round

    def _restore(self, path: Path) -> None:
        saved = ckpt.read_config(path).get("distill", {}).get("config") or {}
        mine = self.cfg.to_dict()
        for name in _RESUME_FIELDS:
            if saved.get(name) != mine[name]:
                raise InvalidArgument(
                    f"distill resume: {name} = {mine[name]!r} differs from the checkpoint's "
                    f"{saved.get(name)!r} ({path})"
                )
        state = ckpt.read_training_state(path)
        self.student.load_state_dict(state["model"])
        self.step = state["step"]
        self.optimizer_state = state.get("optimizer")

    def teacher_dir(self, r: int) -> Path:
        return self.run_dir / "teachers" / f"round_{r:02d}"

    def round_teacher(self, r: int) -> Any:
        """The teacher of round r: saved at the round's start, so a resumed round reads the same one."""
        where = self.teacher_dir(r)
        if ckpt.latest(where) is not None:
            return ckpt.load(where).to(self.device).eval()
        teacher = self.teacher0 if r == 0 else copy.deepcopy(self.student).eval()
        ckpt.save(where, 0, model=teacher, config=self.ckpt_config, keep=1)
        return teacher

    def optimizer(self, first_step_of_round: bool) -> torch.optim.Optimizer:
        opt = torch.optim.AdamW(self.student.parameters(), lr=self.cfg.lr, weight_decay=0.0)
        if not first_step_of_round and self.optimizer_state is not None:
            opt.load_state_dict(self.optimizer_state)
        return opt

    def train_step(self, teacher: Any, opt: torch.optim.Optimizer, dt: float, k: int) -> float:
        """One optimizer step (the `k`-th of its round); returns the batch's loss in nats per token."""
        cfg = self.cfg
        lr = cfg.lr * min(1.0, (k + 1) / cfg.warmup_steps) if cfg.warmup_steps else cfg.lr
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for rows in torch.arange(cfg.batch_size).chunk(cfg.grad_accum):
            x0 = self.corpus.batch_at(self.seq_len, cfg.seed, self.step, rows).to(self.device)
            per_seq = sdtt_loss(
                self.student, teacher, x0, seed=cfg.seed, step=self.step, rows=rows, dt=dt, loss=cfg.loss
            )
            (per_seq.sum() / cfg.batch_size).backward()
            total += float(per_seq.detach().sum())
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.student.parameters(), cfg.grad_clip)
        opt.step()
        self.step += 1
        loss = total / cfg.batch_size
        if not math.isfinite(loss):
            raise DivergenceError(f"distill: loss is {loss} at step {self.step}; lower lr")
        return loss

    def save(self, opt: torch.optim.Optimizer | None) -> Path:
        state = {"distill_step": self.step, "data": {"position": "the step", "step": self.step}}
        return ckpt.save(
            self.run_dir,
            self.step,
            model=self.student,
            config=self.ckpt_config,
            optimizer=opt,
            state=state,
            keep=self.cfg.keep_checkpoints,
        )

    def fit(self) -> Path:
        """Runs the rounds from `step`; Ctrl-C saves a checkpoint at the end of the step in progress."""
        interrupt = _Interrupt("ddm distill")
        log = JsonlLog(self.run_dir, self.step if self.step else None)
        progress = _Progress(self.cfg.progress, self.total, self.step)
        last = ckpt.latest(self.run_dir) if self.step else None
        try:
            with interrupt.installed():
                while self.step < self.total:
                    last = self._round(log, progress, interrupt) or last
        finally:
            progress.close()
        return last if last is not None else self.save(None)

    def _round(self, log: JsonlLog, progress: _Progress, interrupt: _Interrupt) -> Path | None:
        """The rest of the round `step` is in; returns its last checkpoint."""
        cfg, dts, last = self.cfg, self.cfg.dts(), None
        r, first = divmod(self.step, cfg.steps_per_round)
        teacher, opt = self.round_teacher(r), self.optimizer(first == 0)
        for k in range(first, cfg.steps_per_round):
            loss = self.train_step(teacher, opt, dts[r], k)
            record = {"step": self.step, "round": r, "dt": dts[r], "loss": loss}
            end = k == cfg.steps_per_round - 1
            if self.step % cfg.log_every == 0 or end:
                log.on_log(None, record)  # type: ignore[arg-type]  (JsonlLog reads the record only)
                progress.update(record, self.step)
            if self.step % cfg.save_every == 0 or end or interrupt.requested:
                last = self.save(opt)
            if interrupt.requested:
                say(f"ddm distill: stopped at step {self.step}; checkpoint {last}")
                say(f"  resume with: {self.resume_hint()}")
                raise KeyboardInterrupt
        self.optimizer_state = None
        return last

    def resume_hint(self) -> str:
        """What continues this run."""
        return f"ddm distill TEACHER --resume --run-dir {self.run_dir} (with the same options)"


def distill(
    teacher: Any, config: DistillConfig | None = None, *, student: Any = None, resume: bool = False
) -> Path:
    """Distils an absorbing teacher into a few-step student by SDTT; returns the student's checkpoint.

    Args:
        teacher: a checkpoint path, run directory, Hub id or SEDD checkpoint (anything `ddm.load` reads),
            or a `ScoreModel`.
        config: the run (`DistillConfig`; default: its defaults).
        student: the initial student (default: a copy of the teacher); its graph, vocabulary and schedule
            must be the teacher's.
        resume: continue the run in `config.run_dir` from its latest checkpoint, exactly.

    Returns:
        The last checkpoint: an ordinary checkpoint (`ddm.load`, `ddm sample`) whose `config.json` names
        its teacher and intended step count under `"distill"`.

    Raises:
        InvalidArgument: a uniform or block teacher, a student that does not match, a bad config.
        CheckpointError: the teacher does not load.
    """
    config = config if config is not None else DistillConfig()
    if not isinstance(config, DistillConfig):
        raise InvalidArgument(f"distill: config must be a DistillConfig, got {type(config).__name__}")
    return _Run(teacher, config, student, resume).fit()
