"""The Hugging Face Hub layout: `save_pretrained`, `push_to_hub`, and Hub ids for `ddm.io.load`.

A ddm model on the Hub (or in a directory written by `save_pretrained`) follows the Hub's conventions for
PyTorch models (`huggingface_hub.PyTorchModelHubMixin`):

    config.json         ddm's checkpoint config: format_version, objective, model, graph, schedule,
                        tokenizer and, when known, the training config (`train`) and the measured bound
    model.safetensors   the weights to use (the EMA weights of a training checkpoint)
    README.md           the model card: YAML metadata (`library_name: ddm`), the architecture, the
                        training config and the measured bound

Hub ids (`"user/repo"`) resolve through the local Hugging Face cache with `huggingface_hub.hf_hub_download`:
a cached snapshot is used as it is, and with `HF_HUB_OFFLINE=1` nothing touches the network. A cache miss
raises `FileNotFoundError` saying what to download and how; offline, only the cache is read (the
downloader is never called), so the failure is instant. The published SEDD models
(`louaaron/sedd-small`, `louaaron/sedd-medium`) are in the same layout with the reference config, and load
by Hub id the same way (through `ddm.io.sedd.load_sedd`).

Loading reads data only: `config.json` with `json`, weights with `safetensors` (or, for a SEDD
`pytorch_model.bin`, `torch.load(weights_only=True)`, which refuses a pickle that would build objects);
no code from a repository is ever imported or run (there is no `trust_remote_code`).

`huggingface_hub` is the `hub` extra (`pip install ddm[hub]`); local directories need nothing extra.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ddm.errors import InvalidArgument
from ddm.io import checkpoint, run

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "is_hub_dir",
    "is_repo_id",
    "load_hub_dir",
    "looks_like_repo_id",
    "model_card",
    "push_to_hub",
    "resolve",
    "save_pretrained",
    "snapshot",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
# Weight files fetched for a Hub id, in order of preference: ddm and SEDD's safetensors, then SEDD's
# PyTorchModelHubMixin pickle (read with weights_only=True). Training checkpoints (*.pth) are never fetched.
HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


# ---------------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------------


def looks_like_repo_id(name: Any) -> bool:
    """True when `name` has the form of a Hub model id, `"user/repo"` (no `..`), wherever it exists."""
    return isinstance(name, str) and bool(_REPO_ID.match(name)) and ".." not in name


def is_repo_id(name: Any) -> bool:
    """True when `name` is taken for a Hub model id: it has the form `"user/repo"`, and neither it nor its
    first path component (`user`) exists here, so that a typo inside a local folder stays a path."""
    if not looks_like_repo_id(name):
        return False
    return not Path(name).exists() and not Path(name.split("/", 1)[0]).exists()


def is_hub_dir(path: str | os.PathLike) -> bool:
    """True for a directory in ddm's Hub layout (`config.json` with a `format_version` and
    `model.safetensors`) that is not a training checkpoint (`ddm.io.run.checkpoint_kind`, which knows a
    checkpoint by its manifest): what `save_pretrained` writes."""
    path = Path(path)
    cfg = path / CONFIG_NAME
    if not (path.is_dir() and cfg.is_file() and (path / WEIGHTS_NAME).is_file()):
        return False
    if run.checkpoint_kind(path) is not None:  # a training checkpoint: ddm.io.checkpoint reads it
        return False
    try:
        with open(cfg, encoding="utf-8") as f:
            return "format_version" in json.load(f)
    except (OSError, ValueError):
        return False


def _hub(name: str | None = None) -> Any:
    try:
        import huggingface_hub  # the optional `hub` extra: imported only when a Hub id is used
        import huggingface_hub.constants  # noqa: F401 (a lazy attribute of the package otherwise)
    except ImportError:
        if name is not None:  # a missing local path that reads as a Hub id
            raise FileNotFoundError(
                f"no such path {name!r}; as a Hub model id it needs huggingface_hub: pip install 'ddm[hub]'"
            ) from None
        raise ImportError(
            "loading or pushing a Hub id needs huggingface_hub: pip install 'ddm[hub]' "
            "(a local directory needs nothing extra)"
        ) from None
    return huggingface_hub


def _cache_dir(cache_dir: str | os.PathLike | None) -> str:
    if cache_dir is not None:
        return str(cache_dir)
    return str(_hub().constants.HF_HUB_CACHE)


def _miss(repo_id: str, filename: str, revision: str | None, cache_dir: str, why: str) -> FileNotFoundError:
    rev = f" --revision {revision}" if revision else ""
    offline = _hub().constants.HF_HUB_OFFLINE
    how = (
        "HF_HUB_OFFLINE=1 is set, so nothing is downloaded: download it on a machine with network "
        f"access with `hf download {repo_id}{rev}` (older huggingface_hub: `huggingface-cli download "
        f"{repo_id}{rev}`) into this cache (HF_HUB_CACHE / HF_HOME), or unset HF_HUB_OFFLINE (or set "
        "HF_HUB_OFFLINE=0) to let ddm download it"
        if offline
        else f"download it with `hf download {repo_id}{rev}`, or pass a local directory"
    )
    return FileNotFoundError(
        f"{repo_id!r} is not a local path, and {filename!r} of the Hub model {repo_id!r} is not in the "
        f"Hugging Face cache {cache_dir!r} ({why}); {how}"
    )


def snapshot(
    repo_id: str,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
) -> Path:
    """The local snapshot directory of a Hub model, with `config.json` and its weights.

    Uses `huggingface_hub.hf_hub_download`: files already in the cache are used as they are (offline
    with `HF_HUB_OFFLINE=1`); otherwise they are downloaded into the cache. Only `config.json`, the
    model card and the first of `model.safetensors` / `pytorch_model.bin` the repository has are fetched.

    Raises:
        FileNotFoundError: a file is not cached and cannot be downloaded; the message says how to get it.
        ImportError: `huggingface_hub` is not installed.
    """
    hub = _hub(repo_id)
    cache = _cache_dir(cache_dir)
    if hub.constants.HF_HUB_OFFLINE:
        return _cached_snapshot(hub, repo_id, revision, cache)
    # huggingface_hub's error classes, a submodule that the package imports lazily
    from huggingface_hub import errors

    def get(filename: str) -> Path:
        return Path(
            hub.hf_hub_download(
                repo_id, filename, revision=revision, cache_dir=cache, token=token, library_name="ddm"
            )
        )

    try:
        cfg = get(CONFIG_NAME)
    except errors.LocalEntryNotFoundError as e:
        raise _miss(repo_id, CONFIG_NAME, revision, cache, type(e).__name__) from None
    except (errors.RepositoryNotFoundError, errors.RevisionNotFoundError) as e:
        raise FileNotFoundError(f"no Hub model {repo_id!r} (revision {revision or 'main'}): {e}") from None
    except errors.EntryNotFoundError:
        raise FileNotFoundError(f"the Hub model {repo_id!r} has no {CONFIG_NAME}") from None
    missing = []
    for name in HUB_WEIGHT_FILES:
        try:
            get(name)
            break
        except errors.LocalEntryNotFoundError as e:
            missing.append((name, type(e).__name__))
        except errors.EntryNotFoundError:  # the repository has no such file: try the next name
            continue
    else:
        if missing:
            raise _miss(repo_id, missing[0][0], revision, cache, missing[0][1])
        raise FileNotFoundError(f"the Hub model {repo_id!r} has none of {list(HUB_WEIGHT_FILES)}")
    for name in _optional_files(cfg):
        try:
            get(name)
        except (errors.EntryNotFoundError, OSError):  # optional (and a local miss is fine)
            pass
    return cfg.parent


def _optional_files(cfg: Path) -> list[str]:
    """The files worth fetching beside the weights: the card, and the EMA weights of a ddm checkpoint."""
    optional = [CARD_NAME]
    try:
        with open(cfg, encoding="utf-8") as f:
            if "format_version" in json.load(f):  # ddm's config: maybe a training checkpoint, uploaded
                optional.append("ema.safetensors")  # as it is, whose EMA weights are the ones to load
    except (OSError, ValueError):
        pass
    return optional


def _cached_snapshot(hub: Any, repo_id: str, revision: str | None, cache: str) -> Path:
    """`snapshot` with `HF_HUB_OFFLINE=1`: read the local cache only, never calling the downloader."""

    def cached(filename: str) -> str | None | bool:
        """The cached file's path, False if the cache records that the repo has no such file, else None."""
        found = hub.try_to_load_from_cache(repo_id, filename, cache_dir=cache, revision=revision)
        return found if isinstance(found, str) else (False if found is not None else None)

    cfg = cached(CONFIG_NAME)
    if not cfg:
        raise _miss(repo_id, CONFIG_NAME, revision, cache, "not in the cache")
    found = {name: cached(name) for name in HUB_WEIGHT_FILES}
    if not any(found.values()):
        unknown = [name for name, f in found.items() if f is None]
        if unknown:
            raise _miss(repo_id, unknown[0], revision, cache, "not in the cache")
        raise FileNotFoundError(f"the Hub model {repo_id!r} has none of {list(HUB_WEIGHT_FILES)}")
    return Path(cfg).parent


def resolve(name_or_path: str | os.PathLike, *, revision: str | None = None, **kwargs: Any) -> Path:
    """A local directory or file for a path, or for a Hub id through the local cache (`snapshot`)."""
    if is_repo_id(name_or_path):
        return snapshot(str(name_or_path), revision=revision, **kwargs)
    return Path(name_or_path)


# ---------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------


def load_hub_dir(path: Path, device: str | torch.device | None) -> Any:
    """The model of a `save_pretrained` directory (`is_hub_dir`) in eval mode, on `device` (default CPU)."""
    cfg = checkpoint.read_config(path)
    model = checkpoint.build_model(cfg)
    device = torch.device(device) if device is not None else torch.device("cpu")
    model.load_state_dict(checkpoint.load_weights(path / WEIGHTS_NAME, device), strict=True)
    model.to(device).eval()
    model.checkpoint_path = path
    return model


# ---------------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------------


IN_TRAINING = "in-training estimate"  # the `source` of a bound read from the run's periodic evaluations


def _run_bound(log: Path) -> dict[str, Any] | None:
    """The run's final held-out bound, else its last in-training estimate, from `log.jsonl`.

    A record with a `"heldout_bound"` object (a `Bound.to_dict()`) is a full held-out evaluation and is
    preferred; the periodic `eval_bits_per_token` records are the in-training estimate (few blocks and
    times: noisy), which the card labels as such.
    """
    final, estimate = None, None
    for line in log.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if not isinstance(rec, dict):
            continue
        if isinstance(rec.get("heldout_bound"), dict):
            final = {**rec["heldout_bound"], "source": "held-out"}
            final.setdefault("step", rec.get("step"))
        elif "eval_bits_per_token" in rec:
            estimate = {
                "bits_per_token": rec["eval_bits_per_token"],
                "stderr_bits": rec.get("eval_stderr_bits"),
                "step": rec.get("step"),
                "data": "held-out split of the training corpus (during training)",
                "source": IN_TRAINING,
            }
    return final if final is not None else estimate


def _run_config(model: Any) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(training config, held-out bound from the run's log.jsonl) of a model loaded from a run."""
    path = getattr(model, "checkpoint_path", None)
    if path is None:
        return None, None
    path = Path(path)
    train, bound = None, None
    try:
        with open(path / CONFIG_NAME, encoding="utf-8") as f:
            cfg = json.load(f)
        if isinstance(cfg, dict):  # a training checkpoint has `train`; a Hub directory may have both
            train, bound = cfg.get("train"), cfg.get("bound")
    except (OSError, ValueError):
        pass
    if bound is not None:
        return train, bound
    run_dir = run.run_dir_of(path)
    log = run.log_path(run_dir) if run_dir is not None else None
    return train, (_run_bound(log) if log is not None and log.is_file() else None)


def _bound_dict(bound: Any) -> dict[str, Any] | None:
    if bound is None:
        return None
    if hasattr(bound, "to_dict"):
        return bound.to_dict()
    if isinstance(bound, dict):
        return dict(bound)
    raise InvalidArgument(f"bound must be a ddm.eval.Bound or a dict, got {type(bound).__name__}")


def hub_config(model: Any, *, train: dict[str, Any] | None = None, bound: Any = None) -> dict[str, Any]:
    """The `config.json` content of `save_pretrained` (ddm's checkpoint config, plus the bound)."""
    objective = getattr(model, "objective", "diffusion")
    graph = getattr(model, "graph", None)
    schedule = getattr(model, "schedule", None)
    tokenizer = getattr(model, "tokenizer", None)
    if objective != "autoregressive" and (graph is None or schedule is None):
        raise InvalidArgument("save_pretrained needs a ddm model with graph and schedule (a ScoreModel)")
    run_train, run_bound = _run_config(model)
    return {
        "format_version": checkpoint.FORMAT_VERSION,
        "library_name": "ddm",
        "objective": objective,
        "model": model.config.to_dict(),
        "graph": graph.to_config() if graph is not None else None,
        "schedule": schedule.to_config() if schedule is not None else None,
        "tokenizer": tokenizer.to_config() if tokenizer is not None else None,
        "train": train if train is not None else run_train,
        "bound": _bound_dict(bound) if bound is not None else run_bound,
        **_distill_record(model),
    }


def _distill_record(model: Any) -> dict[str, Any]:
    """`{"distill": ...}` of a student written by `ddm distill` (its teacher, step counts), else `{}`."""
    path = getattr(model, "checkpoint_path", None)
    try:
        cfg = json.loads((Path(path) / CONFIG_NAME).read_text(encoding="utf-8")) if path else None
    except (OSError, ValueError):
        return {}
    return {"distill": cfg["distill"]} if isinstance(cfg, dict) and "distill" in cfg else {}


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.4f}" if isinstance(v, float) and math.isfinite(v) else str(v)


def _bound_lines(bound: dict[str, Any] | None) -> list[str]:
    """The card's "Measured bound" section: the figure, what it was measured on, and how reliable it is."""
    if not bound:
        return ["Not measured: run `ddm eval` and pass its bound as `bound=` to `save_pretrained`."]
    unit = bound.get("unit", "token")
    figure = f"**{_fmt(bound.get('bits_per_token'))} +- {_fmt(bound.get('stderr_bits'))} bits/{unit}**"
    where = (f", on {bound['data']}" if bound.get("data") else "") + (
        f", at step {bound['step']}" if bound.get("step") is not None else ""
    )
    if bound.get("source") == IN_TRAINING:
        head = [
            f"In-training estimate of the held-out bound (few blocks and times, so noisy): {figure}{where}. "
            "This is not the final held-out bound: run `ddm eval` on the checkpoint and pass its bound as "
            "`bound=` to `save_pretrained`."
        ]
    else:
        head = [
            "Upper bound on the negative log-likelihood (SEDD's ELBO, Monte-Carlo estimate): "
            f"{figure} (+- one standard error){where}."
        ]
    return [*head, "", "```json", json.dumps(bound, indent=1), "```"]


def model_card(cfg: dict[str, Any], num_parameters: int | None = None) -> str:
    """The model card (README.md) of a `hub_config`: YAML metadata, architecture, training config, bound."""
    kind = "autoregressive" if cfg.get("objective") == "autoregressive" else "sedd"
    tags = ["ddm", "discrete-diffusion", kind]
    lines = ["---", "library_name: ddm", "tags:"] + [f"- {t}" for t in tags] + ["---", ""]
    graph = (cfg.get("graph") or {}).get("type", "none")
    schedule = (cfg.get("schedule") or {}).get("type", "none")
    tok = (cfg.get("tokenizer") or {}).get("type", "none")
    lines += [
        "# A ddm score-entropy discrete diffusion model",
        "",
        f"Objective `{cfg.get('objective')}`, graph `{graph}`, schedule `{schedule}`, tokenizer `{tok}`"
        + (f", {num_parameters:,} parameters." if num_parameters is not None else "."),
        "",
        "```python",
        "import ddm",
        "",
        'model = ddm.load("USER/REPO")  # or ddm.ScoreModel.from_pretrained("USER/REPO")',
        "x = ddm.sample(model, 128, batch_size=4, seed=0)",
        "print(model.tokenizer.decode(x[0].tolist()))",
        "```",
        "",
        "## Architecture",
        "",
        "```json",
        json.dumps(cfg.get("model"), indent=1),
        "```",
        "",
        "## Measured bound",
        "",
    ]
    lines += _bound_lines(cfg.get("bound"))
    if cfg.get("distill"):  # a few-step student (ddm.training.distill)
        d = cfg["distill"]
        lines += ["", "## Distillation", "", f"Distilled by {d.get('method', '?').upper()} from "
                  f"`{d.get('teacher')}` ({d.get('teacher_steps')} steps) for **{d.get('student_steps')} "
                  f"steps**: `ddm.sample(model, {d.get('student_steps')})`."]  # fmt: skip
    names = (cfg.get("model") or {}).get("label_names")
    if names:  # a labelled model
        usage = "`ddm.sample(model, 128, label=NAME, guidance=2.0)` with NAME one of: "
        lines += ["", "## Class labels", "", usage + ", ".join(f"`{n}`" for n in names) + "."]
    lines += ["", "## Training config", ""]
    if cfg.get("train"):
        lines += ["```json", json.dumps(cfg["train"], indent=1), "```"]
    else:
        lines.append("Not recorded.")
    return "\n".join(lines) + "\n"


def save_pretrained(
    model: Any,
    save_directory: str | os.PathLike,
    *,
    train: dict[str, Any] | None = None,
    bound: Any = None,
) -> Path:
    """Writes `config.json`, `model.safetensors` and a model card `README.md` into `save_directory`.

    The directory may exist; the three files are replaced (each written to a temporary name first).
    `ddm.load(save_directory)` and `ScoreModel.from_pretrained(save_directory)` give back a model with
    identical outputs, and `huggingface_hub.upload_folder` (or `push_to_hub`) publishes it.

    Args:
        model: a `ScoreModel` (or ddm's `ARModel`); its current weights are written (a model from
            `ddm.load` of a training checkpoint holds the EMA weights).
        save_directory: the directory.
        train: the training config for the card (default: the run's, when the model was loaded from a
            training checkpoint).
        bound: the measured bound, a `ddm.eval.Bound` or a dict (default: the last held-out bound in
            the run's `log.jsonl`, when there is one).

    Returns:
        The directory.
    """
    cfg = hub_config(model, train=train, bound=bound)
    out = Path(save_directory)
    out.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    n = sum(p.numel() for p in model.parameters())

    def put(name: str, write: Any) -> None:
        tmp = out / f".{name}.tmp-{os.getpid()}"
        try:
            write(tmp)
            os.replace(tmp, out / name)
        finally:
            if tmp.exists():
                tmp.unlink()

    put(WEIGHTS_NAME, lambda p: save_file(weights, str(p), metadata={"format": "pt"}))
    put(CONFIG_NAME, lambda p: p.write_text(json.dumps(cfg, indent=1) + "\n", encoding="utf-8"))
    put(CARD_NAME, lambda p: p.write_text(model_card(cfg, n), encoding="utf-8"))
    return out


def push_to_hub(
    model: Any,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str = "Upload ddm model",
    train: dict[str, Any] | None = None,
    bound: Any = None,
) -> Any:
    """Publishes `model` to the Hub: creates `repo_id` if needed and uploads what `save_pretrained` writes.

    Returns:
        huggingface_hub's `CommitInfo` of the upload.
    """
    hub = _hub()
    api = hub.HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    tmp = Path(tempfile.mkdtemp(prefix="ddm-push-"))
    try:
        save_pretrained(model, tmp, train=train, bound=bound)
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=str(tmp),
            repo_type="model",
            revision=revision,
            commit_message=commit_message,
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
