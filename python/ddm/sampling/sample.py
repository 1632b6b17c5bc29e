"""`sample`: the SEDD reverse process from the limit law to data (docs/math.md section 5).

`sample` resolves its arguments once (the predictor from the registry, the backend `Ops`, the seed, the
conditioning) and dispatches: a grid predictor to `ddm.sampling.grid.run_grid`, an unmasking predictor to
`ddm.sampling.unmasking.run_unmasking`, a block-diffusion model to `ddm.sampling.blocks.sample_blocks`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ddm.errors import InvalidArgument
from ddm.sampling import predictors, response
from ddm.sampling.blocks import sample_blocks
from ddm.sampling.conditioning import build_fixed
from ddm.sampling.grid import run_grid
from ddm.sampling.guidance import GuidedBlocks, build_guided
from ddm.sampling.ops import Ops, get_ops
from ddm.sampling.options import RunOptions
from ddm.sampling.sampler import Sampler, check_seed, random_seed
from ddm.sampling.unmasking import progress_bar, run_unmasking

__all__ = ["sample", "SampleStats"]


@dataclass
class SampleStats:
    """What a `sample` run did.

    Attributes:
        network_calls: how many times the model was called.
        rows_evaluated: how many sequences the model evaluated in all (a cached row costs nothing; a call
            on the rows that changed counts only those).
        evaluations: the number of points of the time grid at which a log-score was needed
            (`steps + 1` with denoising, else `steps`); without caching it equals `network_calls`.
        cache: whether network outputs were reused.
        backend: `"rust"` or `"torch"`, where the steps ran.
        seed: the seed used (drawn when `seed=None` was given).
        lengths: block models, and responses with `stop_at_eos`: int64 `[B]`, the tokens of each row
            (its end-of-sequence token included); None otherwise.
        blocks: block models: the blocks generated; None otherwise.
    """

    network_calls: int
    rows_evaluated: int
    evaluations: int
    cache: bool
    backend: str
    seed: int
    lengths: torch.Tensor | None = None
    blocks: int | None = None


def _model_device_dtype(model: Any) -> tuple[torch.device, torch.dtype]:
    """The device of the model's first parameter or buffer and its floating dtype (CPU, float64 if none)."""
    if isinstance(model, torch.nn.Module):
        for p in list(model.parameters()) + list(model.buffers()):
            dtype = p.dtype if p.is_floating_point() else torch.float32
            return p.device, dtype
    return torch.device("cpu"), torch.float64


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise InvalidArgument(f"{name} must be >= 1, got {value}")
    return value


def _check_keywords(options: dict[str, Any]) -> None:
    """`InvalidArgument` naming a keyword that is neither a run option nor any predictor's option."""
    valid = (*RunOptions.names(), *predictors.option_fields())
    for key in options:
        if key not in valid:
            raise InvalidArgument(
                f"sample() got an unknown option {key!r}; the options are {', '.join(valid)}"
            )


def _model_parts(model: Any, graph: Any, schedule: Any) -> tuple[Any, Any]:
    """The graph and schedule (the model's by default), checked against the model's."""
    if not callable(model):
        raise InvalidArgument(f"model must be callable as model(x, sigma), got {type(model).__name__}")
    if getattr(model, "objective", None) == "autoregressive":
        raise InvalidArgument(
            "model is an autoregressive model (objective 'autoregressive'), not a diffusion model: "
            "ddm.sample "
            "runs the reverse diffusion process; draw from it with "
            "ddm.model.autoregressive.ancestral_sample(model, batch_size, seed=...)"
        )
    model_graph = getattr(model, "graph", None)
    if graph is None:
        graph = model_graph
        if graph is None:
            raise InvalidArgument("graph is required: the model does not carry one (model.graph)")
    elif model_graph is not None and graph != model_graph:
        raise InvalidArgument(f"graph={graph!r} does not match the model's graph {model_graph!r}")
    if schedule is None:
        schedule = getattr(model, "schedule", None)
        if schedule is None:
            raise InvalidArgument("schedule is required: the model does not carry one (model.schedule)")
    return graph, schedule


def sample(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    steps: int,
    *,
    predictor: Any = "analytic",
    graph: Any = None,
    schedule: Any = None,
    batch_size: int = 1,
    seq_len: int | None = None,
    seed: int | None = None,
    device: Any = None,
    backend: str = "auto",
    return_stats: bool = False,
    **options: Any,
) -> torch.Tensor | tuple[torch.Tensor, SampleStats]:
    """Generate sequences with the reverse SEDD process (SEDD section 4; docs/math.md section 5).

    Starts from the limit law (all MASK, or uniform ids) at `t = 1` and takes `steps` tau-leaping steps on
    the grid `t_k = linspace(1, eps, steps + 1)`, each after one network call at
    `sigma = sigma_bar(t_k)`; with `denoise=True` a last call at `t = eps` removes all remaining noise.

    Args:
        model: a score model, `model(x: LongTensor[B, L], sigma: Tensor[B]) -> Tensor[B, L, dim]` returning
            log-scores (any callable). A `ddm.model.ScoreModel` carries `graph`, `schedule` and `seq_len`;
            other callables need them given. It is called under `torch.no_grad()` with `sigma` on its
            device, in the dtype of its parameters (float64 for a plain callable).
        steps: number of predictor steps, >= 1.
        graph: the graph (default `model.graph`); must match the model's when it has one.
        schedule: the noise schedule (default `model.schedule`).
        batch_size: number of sequences `B`.
        seq_len: sequence length `L` (default `model.seq_len`, the longest the model accepts; a longer
            one is an error).
        predictor: a registered name (`ddm.sampling.predictors.names()`) or a `Predictor` object (then its
            options are in its config, not keywords). `"analytic"` (Tweedie tau-leaping) or `"euler"`, or
            for the absorbing graph `"first_hitting"` (exact: one event per call, Zheng et al. 2024;
            `ddm.sampling.predictors.first_hitting`).
            First-hitting draws each free position's unmasking time, unmasks them in that order, one per
            network call, each from the model's conditional at its time; with exact scores its output law
            is `p0` exactly, in `seq_len - |fixed|` calls (`steps` and `denoise` are not used).
            Or `"confidence"`: each call proposes a token at every masked position and commits the best
            ones by `order` (`tokens_per_step`, `threshold`, `entropy_bound`, or by default
            `ceil(masked / calls left)` over `steps` calls; `ddm.sampling.predictors.confidence`). Or
            `"remdm"` (ReMDM remasking, as `remask=` below).
        denoise: end with the denoising step (absorbing: no MASK left in the output).
        eps: the last time of the grid, in `(0, 1)`.
        prefix: token ids fixed at the start, a list or 1-D LongTensor.
        suffix: token ids fixed at the end, a list or 1-D LongTensor.
        infill: other fixed positions: a dict `{position: token_id}`, or a pair
            `(mask: BoolTensor[seq_len], tokens: LongTensor[seq_len])` fixing `tokens[i]` where `mask[i]`.
            Prefix, suffix and infill combine; a position fixed twice must get the same token.
        seed: seed of the counter-based randomness, an int in `[0, 2^64)`: sequence `i` of the batch
            depends only on `(seed, i)`, not on `batch_size`, the backend's thread count or the device.
            None draws a seed from torch's global generator (reported in the stats).
        device: where the tokens and noise levels live (default: the model's device).
        backend: `"auto"` (the Rust step when `device` is the CPU and the core is built, the torch step
            otherwise), `"rust"` or `"torch"`. Both draw from the same law (not the same bits).
        cache: reuse the last network output when no token of a sequence changed since the model last saw
            it. Only for absorbing models whose output depends on sigma only through the closed-form
            scale `l = raw - log expm1(sigma_bar) - log(dim - 1)` (docs/math.md section 4); the reused
            output is
            shifted by `log expm1(sigma_old) - log expm1(sigma_new)` off the current token, which is exact.
            None (default) turns it on when `model.time_independent` is True and the graph is absorbing.
        progress: show a tqdm progress bar on stderr.
        return_stats: also return a `SampleStats` (network calls and the seed).
        **options: the run options below (`ddm.sampling.options.RunOptions`) and the predictor's options
            (the fields of its config dataclass). An unknown keyword is an `InvalidArgument` naming it and
            listing the valid ones; an option of another predictor is one too, unless at its default.
        group_by_step: first-hitting only: unmask together the positions whose times fall in the same
            step of the grid `linspace(1, eps, steps + 1)`, with one call at the top of the step (at most
            `steps` calls; draws within one step are independent, an approximation).
        tokens_per_step: confidence only: commit the `k >= 1` best proposals per call.
        threshold: confidence only: commit every proposal scored above `tau` in `(0, 1]`, at least one
            (Fast-dLLM).
        order: confidence only: the score of a proposal: `"confidence"` (its probability), `"margin"`
            (top-1 minus top-2 probability), `"entropy"` (`exp(-H)` of its law) or `"random"` (with one
            token per call, exact ancestral sampling).
        entropy_bound: confidence only: commit the longest prefix of the ranking whose entropies satisfy
            `sum H - max H <= gamma` (the EB-sampler, arXiv 2505.24857), at least one.
        remask: absorbing graph, grid predictors: the ReMDM sampler (arXiv 2503.00307;
            `ddm.sampling.predictors.remdm`) with remasking strength `eta` in `[0, 1]`: each step masks a
            committed token again with probability `r_k` and unmasks a MASK with the matching ReMDM
            probability, both from the schedule, the token from the model's conditional. None: no
            remasking (the plain step). `0` is the MDLM ancestral step.
        remask_schedule: `"cap"` (`r_k = min(eta, r_max)`) or `"rescale"` (`r_k = eta r_max`), with
            `r_max = min(1, (1 - alpha_s) / alpha_t)` the largest rate that keeps the forward marginals.
        temperature: temperature of every step's proposal distribution, >= 0 (1: the plain step; 0:
            greedy, the most likely state, ties to the lower id, on both backends). The
            proposal is the step's law given that the position moves (absorbing: the law over the real
            tokens a MASK position unmasks to); the probability of staying is unchanged, so the
            unmasking schedule is too (`ddm.sampling.proposal`, docs/math.md section 5.10).
        top_k: keep only the `k >= 1` most likely states of the proposal (None: all).
        top_p: keep only the smallest set of most likely states of the proposal holding mass `>= p`,
            `p` in `(0, 1]` (nucleus sampling; None: all). Temperature, then top-k, then top-p; the kept
            states are renormalised and drawn by float64 inverse CDF. At (1, None, None) the sample is
            the plain sampler's, bit for bit.

        max_len: a block-diffusion model (`model.block_size > 0`, BD3-LM; `ddm.sampling.blocks`): the
            tokens to generate, the prefix included, any number (past the model's `seq_len` the context
            slides); default `seq_len`, else the model's. Blocks are generated left to right, each with
            `predictor` (any of them, with its options) given the clean blocks before it. Other models
            refuse it.
        prompt: a response to this prompt (text, encoded with `model.tokenizer`, or token ids): the prompt
            is the prefix of `len(prompt) + max_new_tokens` tokens (`max_len` for a block model) and only
            the `max_new_tokens` new tokens are returned; with `stop_at_eos` each row is cut at its first
            `eos_id` (the rest set to `eos_id`, `stats.lengths` its length), for any model
            (`ddm.sampling.response`). Replaces `prefix`, `seq_len` and `max_len`.
        max_new_tokens: with `prompt`: the tokens to generate (default: what `seq_len` leaves).
        stop_at_eos: block models: stop each row at its first `eos_id` (the batch stops when every row
            has); the tokens after it are `eos_id` and `stats.lengths` gives the lengths.
        eos_id: the end-of-sequence id (default `model.tokenizer.eos_id`).
        kv_cache: block models: cache the keys and values of finished blocks (default); False
            recomputes the whole context at every call, with the same log-scores to float32 rounding.
        label: a labelled model (`model.num_classes > 0`, trained with `--label-field`): the class of
            every row, a name (`model.label_names`) or an id, or a list of one per row. Without
            `guidance` the conditional model samples; a labelled model without `label` samples with
            the null label (unconditional). See `ddm.sampling.guidance`.
        guidance: classifier-free guidance strength `gamma >= 0` (0: the unconditional model, 1: the
            conditional one, bit for bit; > 1: sharper). With `label`: the null label is the
            unconditional pass. Without a label but with a prefix / suffix / infill (absorbing graph):
            prompt guidance, the unconditional pass sees the prompt as MASK (LLaDA's `w = gamma - 1`).
            Both passes are one network call on `2B` rows; the exact cache still applies.
        guidance_rule: `"dcfg"` (absorbing default: mix the clean-token predictions, Schiff et al. 2024)
            or `"rates"` (uniform default: mix the reverse rates, Nisonoff et al. 2024); docs/math.md 14.

    Returns:
        int64 `[batch_size, seq_len]` tokens on `device`, or `(tokens, stats)` with `return_stats=True`.
        A block model gives `[batch_size, max_len]`, or with `stop_at_eos` `[batch_size, T]` with `T` the
        longest row.

    Conditioning is by projection: the fixed positions are written into the sequence before every step and
    at the end, and never change. For the absorbing graph this samples the exact conditional
    `p_0(free | fixed)` (a clean token is a clean observation, docs/math.md section 5). For the uniform
    graph the
    model reads a fixed token as a noisy observation, so projection is an approximation: with exact scores
    on a small, strongly dependent test law (3 symbols, length 3) the total-variation distance between the
    law of the projected sampler's free positions and the true conditional is 0.206 for a prefix, 0.243
    for a suffix and 0.145 for an infill pattern (`tests/test_exactness.py::test_uniform_projection_gap`).
    Use the absorbing graph when conditioning matters.

    Log-scores: any float value, or `-inf` for an exact zero ratio ("never this token", as a model outputs
    after masking a token out): that token is then never drawn, on both backends. Scores of any size are
    handled (each row is shifted by its maximum before `exp`). NaN and `+inf` are refused with a
    ValueError naming `log_score`, as is an absorbing denoising step at a MASK whose every real token has
    log-score `-inf`.

    Raises:
        InvalidArgument: an unknown option, an autoregressive model (draw from it with
            `ddm.model.autoregressive.ancestral_sample`), `steps < 1`, `temperature < 0`, `top_k < 1`,
            `top_p` outside `(0, 1]`,
            `tokens_per_step < 1`, `threshold` outside `(0, 1]`, `first_hitting`, `confidence` or
            `remask` on the uniform graph (it has no MASK), a `seq_len`
            longer than the model's, an unknown predictor or backend,
            a prefix or suffix longer than `seq_len`, token ids outside the vocabulary, a malformed infill,
            or a model output of the wrong shape.
    """
    _check_keywords(options)
    run, predictor_options = RunOptions.split(options)
    if run.prompt is not None or run.max_new_tokens is not None:  # a response (ddm.sampling.response)
        common = dict(predictor=predictor, graph=graph, schedule=schedule, batch_size=batch_size, seed=seed,
                      device=device, backend=backend)  # fmt: skip
        return _sample_response(model, steps, run, options, seq_len, return_stats, common)
    prefix, suffix, infill, progress = run.prefix, run.suffix, run.infill, run.progress
    steps = _positive_int(steps, "steps")
    batch_size = _positive_int(batch_size, "batch_size")
    graph, schedule = _model_parts(model, graph, schedule)
    # the Sampler checks the predictor and every option against it and the graph
    sampler = Sampler(graph, schedule, predictor, eps=run.eps, denoise=run.denoise, **predictor_options)
    sampler.set_timesteps(steps)
    model_device, sigma_dtype = _model_device_dtype(model)
    device = model_device if device is None else torch.device(device)
    if getattr(model, "block_size", 0):
        ops = get_ops(backend, device, graph)
        seed = random_seed() if seed is None else check_seed(seed)
        x, stats = _sample_blocks(model, sampler, run, ops, device, batch_size, prefix, suffix, infill, seed,
                                  progress)  # fmt: skip
        return (x, stats) if return_stats else x
    if run.max_len is not None or run.stop_at_eos or not run.kv_cache:
        raise InvalidArgument(
            "max_len, stop_at_eos and kv_cache are options of block-diffusion models (model.block_size > 0); "
            "this model generates seq_len tokens at once"
        )
    model_len = getattr(model, "seq_len", None)
    if seq_len is None:
        if model_len is None:
            raise InvalidArgument("seq_len is required: the model does not carry one (model.seq_len)")
        seq_len = model_len
    seq_len = _positive_int(seq_len, "seq_len")
    if model_len is not None and seq_len > model_len:
        raise InvalidArgument(
            f"seq_len={seq_len} is longer than the model's seq_len={model_len} (its maximum)"
        )
    ops = get_ops(backend, device, graph)
    seed = random_seed() if seed is None else check_seed(seed)
    cache = run.cache
    if cache is None:
        cache = bool(graph.absorbing and getattr(model, "time_independent", False))
    elif cache and not graph.absorbing:
        raise InvalidArgument(
            "cache=True needs an absorbing graph (the closed-form sigma scale of docs/math.md section 4)"
        )
    fixed = build_fixed(prefix, suffix, infill, seq_len, graph.vocab_size)
    if fixed is not None:
        fixed = fixed.to(device)
        if fixed.tokens.dim() == 2 and fixed.tokens.shape[0] != batch_size:
            raise InvalidArgument(
                f"{fixed.tokens.shape[0]} prefixes (one per row) for batch_size={batch_size}"
            )
    guided = build_guided(model, graph, batch_size, run.label, run.guidance, run.guidance_rule, fixed, device)
    call = _checked_call(model if guided is None else guided, device, sigma_dtype, (seq_len, graph.dim),
                         with_rows=guided is not None)  # fmt: skip
    x = sampler.init_noise(batch_size, seq_len, seed=seed, device=device)  # (B, L)
    if sampler.unmasking:
        x = x if fixed is None else fixed.apply(x)
        x, calls, rows = run_unmasking(sampler.predictor, sampler.grid, call, x, seed=seed, ops=ops,
                                       progress=progress)  # fmt: skip
        x = x if fixed is None else fixed.apply(x)
        stats = SampleStats(calls, rows, calls, cache, ops.name, seed)
    else:
        x, stats = _sample_grid(sampler, call, x, fixed, seed, ops, cache, sigma_dtype, progress)
    return (x, stats) if return_stats else x


def _sample_response(
    model: Any, steps: int, run: RunOptions, options: dict[str, Any], seq_len: Any, return_stats: bool,
    common: dict[str, Any],
) -> Any:  # fmt: skip
    """`sample` with `prompt`: the prompt as the prefix, only the new tokens returned, cut at EOS with
    `stop_at_eos` (`ddm.sampling.response`)."""
    if run.prompt is None:
        raise InvalidArgument("max_new_tokens is the length of a response: give the prompt too")
    if seq_len is not None or run.prefix is not None or run.max_len is not None:
        raise InvalidArgument("prompt takes the place of prefix, seq_len and max_len: give max_new_tokens")
    p = response.plan(model, run.prompt, run.max_new_tokens, run.stop_at_eos, run.eos_id)
    if p.prefix.dim() == 2:  # one prompt per row
        if common["batch_size"] not in (1, len(p.prefix)):
            raise InvalidArgument(f"{len(p.prefix)} prompts for batch_size={common['batch_size']}")
        common["batch_size"] = len(p.prefix)
    drop = ("prompt", "max_new_tokens", "stop_at_eos", "eos_id", "prefix", "max_len")  # set here
    rest = {k: v for k, v in options.items() if k not in drop}
    if getattr(model, "block_size", 0):  # blocks: generated left to right, stopped at EOS by the block loop
        rest.update(max_len=p.total, stop_at_eos=p.eos_id is not None)
        rest.update({} if p.eos_id is None else {"eos_id": p.eos_id})
    else:
        rest["seq_len"] = p.total
    prefix = p.prefix if p.prefix.shape[-1] else None  # an empty prompt: an unconditional sample
    x, stats = sample(model, steps, prefix=prefix, return_stats=True, **common, **rest)
    out = x[:, p.prefix.shape[-1] :]
    if p.eos_id is not None:
        out, stats.lengths = response.cut_at_eos(out, p.eos_id)
    return (out, stats) if return_stats else out


def _checked_call(
    model: Any, device: torch.device, sigma_dtype: torch.dtype, want: tuple[int, int], with_rows: bool = False
) -> Callable:
    """`call(x, sigma, rows)`: the model on `x` at `sigma` (on `device`, in `sigma_dtype`), its output
    checked to be floating log-scores `[B, L, dim]`; `with_rows`: the model takes the rows too (a
    `ddm.sampling.guidance.Guided`, whose labels are per row)."""

    def call(x: torch.Tensor, sigma: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        # the .to is a no-op for the grid's sigma_in
        sigma = sigma.to(device=device, dtype=sigma_dtype)
        out = model(x, sigma, rows) if with_rows else model(x, sigma)
        if not isinstance(out, torch.Tensor) or not out.is_floating_point():
            raise InvalidArgument("the model must return a floating tensor of log-scores [B, L, dim]")
        if tuple(out.shape) != (x.shape[0], *want):
            raise InvalidArgument(
                f"the model returned shape {list(out.shape)}, expected {[x.shape[0], *want]} "
                f"([B, L, dim] with dim={want[1]})"
            )
        return out

    return call


def _sample_grid(
    sampler: Sampler,
    call: Callable,
    x: torch.Tensor,
    fixed: Any,
    seed: int,
    ops: Ops,
    cache: bool,
    sigma_dtype: torch.dtype,
    progress: bool,
) -> tuple[torch.Tensor, SampleStats]:
    """A grid predictor's run from `x`, with a progress bar over the grid."""
    grid = sampler.grid
    assert grid is not None
    counts = [0, 0]  # network calls, rows evaluated

    def on_call(n_rows: int) -> None:
        counts[0] += 1
        counts[1] += n_rows

    bar = progress_bar(grid.n_eval, "sampling", unit="step") if progress else None
    try:
        with torch.no_grad():
            x = run_grid(
                call, sampler.predictor, grid, x, fixed, seed=seed, ops=ops, cache=cache,
                sigma_dtype=sigma_dtype, on_call=on_call, on_step=None if bar is None else bar.update,
            )  # fmt: skip
    finally:
        if bar is not None:
            bar.close()
    return x, SampleStats(counts[0], counts[1], grid.n_eval, cache, ops.name, seed)


def _sample_blocks(
    model: Any,
    sampler: Sampler,
    run: RunOptions,
    ops: Ops,
    device: torch.device,
    batch_size: int,
    prefix: Any,
    suffix: Any,
    infill: Any,
    seed: int,
    progress: bool,
) -> tuple[torch.Tensor, SampleStats]:
    """`sample` for a block-diffusion model: checks, then `ddm.sampling.blocks.sample_blocks`."""
    graph = sampler.graph
    if suffix is not None or infill is not None:
        raise InvalidArgument(
            "a block model generates left to right: it takes a prefix, not a suffix or infill"
        )
    max_len = _positive_int(model.seq_len if run.max_len is None else run.max_len, "max_len")
    eos_id = run.eos_id
    if run.stop_at_eos:
        if eos_id is None:
            eos_id = getattr(getattr(model, "tokenizer", None), "eos_id", None)
            if eos_id is None:
                raise InvalidArgument("stop_at_eos=True needs eos_id (the model's tokenizer has no eos_id)")
        if isinstance(eos_id, bool) or not isinstance(eos_id, int) or not 0 <= eos_id < graph.vocab_size:
            raise InvalidArgument(f"eos_id must be a token id in [0, {graph.vocab_size}), got {eos_id!r}")
    cache = True if run.cache is None else run.cache  # a block model is time-independent (ScoreModel checks)
    ids = fixed = None
    if prefix is not None:
        if isinstance(prefix, torch.Tensor) and prefix.dim() == 2:
            raise InvalidArgument("a block model takes one prefix for all rows, not one per row")
        fixed = build_fixed(prefix, None, None, max_len, graph.vocab_size)  # checks ids and the length
        assert fixed is not None
        ids = fixed.tokens[: fixed.num_fixed].to(device)
    guided = build_guided(model, graph, batch_size, run.label, run.guidance, run.guidance_rule, fixed, device)
    model = model if guided is None else GuidedBlocks(model, guided)  # the two passes in one call
    res = sample_blocks(
        model, sampler.predictor, sampler.grid, shape=(batch_size, max_len), prefix=ids, seed=seed,
        ops=ops, device=device, cache=cache, kv_cache=run.kv_cache,
        eos_id=eos_id if run.stop_at_eos else None, progress=progress,
    )  # fmt: skip
    assert sampler.grid is not None
    stats = SampleStats(
        network_calls=res.network_calls, rows_evaluated=res.rows_evaluated,
        evaluations=sampler.grid.n_eval * res.blocks, cache=cache, backend=ops.name, seed=seed,
        lengths=res.lengths, blocks=res.blocks,
    )  # fmt: skip
    return res.tokens, stats
