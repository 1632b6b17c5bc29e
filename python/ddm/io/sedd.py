"""Published SEDD checkpoints in ddm: `load_sedd` reads them, `export_sedd` writes the same layout.

The SEDD authors (Lou, Meng, Ermon 2024) publish trained models (`sedd-small`, `sedd-medium`: absorbing
graph, GPT-2 tokens, length 1024) in the Hugging Face `PyTorchModelHubMixin` layout: a directory with
`config.json` (the hydra training config: `model.{hidden_size, n_heads, n_blocks, cond_dim, length,
dropout, scale_by_sigma, name, type}`, `graph.type`, `noise.{type, sigma_min, sigma_max}`, `tokens`) and
the weights in `model.safetensors` or `pytorch_model.bin`. Their training code also writes
`checkpoint.pth` files holding `{"model", "ema", "optimizer", "step"}`, where `"ema"` is
`{"decay", "num_updates", "shadow_params"}` with `shadow_params` a list in parameter order.

The reference network ("DDiT") and ddm's `ScoreModel` compute the same function; the names map one to
one (`vocab_embed.embedding` -> `embed.weight`, `sigma_map.mlp.*` -> `noise_embed.mlp.*`,
`blocks.i.attn_qkv` -> `blocks.i.qkv`, `blocks.i.adaLN_modulation` -> `blocks.i.modulation`,
`output_layer.{norm_final, linear, adaLN_modulation}` -> `final.{norm, linear, modulation}`, the rest
unchanged) with one exception: the rotary layout. The reference rotates channel pairs `(j, j + hd/2)` of
each head ("rotate half"), ddm rotates adjacent pairs `(2j, 2j + 1)`, both with frequency
`base^(-2j/hd)`. Permuting the query and key rows of each head in `attn_qkv` (`new[2j] = old[j]`,
`new[2j + 1] = old[j + hd/2]`) turns one into the other exactly: rotation commutes with the relabelling,
and attention only sees the dot products `q . k`, which a common permutation of both leaves unchanged
(values are not rotated and not permuted). So the loader permutes those rows and the exporter undoes it,
and ddm's network needs no option for the reference layout.

Checkpoints are data, never code: safetensors files are read with `safetensors`, `.pth` / `.bin` files
with `torch.load(..., weights_only=True)`, which refuses a pickle that would build arbitrary objects.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ddm import _fs, tokenizers
from ddm.errors import CheckpointError, InvalidArgument
from ddm.graphs import Absorbing, Uniform
from ddm.model import ModelConfig, ScoreModel, is_absorbing
from ddm.schedules import Geometric, LogLinear

__all__ = [
    "export_sedd",
    "from_reference_state_dict",
    "is_sedd_checkpoint",
    "load_sedd",
    "reference_parameter_shapes",
    "sedd_config",
    "to_reference_state_dict",
]

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "checkpoint.pth")  # searched in a directory
ROTARY_KEY = "rotary_emb.inv_freq"  # a (persistent) buffer of the reference model, not a parameter
ROTARY_BASE = 10000.0
LOGLINEAR_EPS = 1e-3  # the reference's `get_noise` builds LogLinearNoise() with its default eps
FREQUENCY_DIM = 256  # the reference TimestepEmbedder's sinusoid size
MLP_RATIO = 4  # the reference DDiTBlock's default, never overridden by SEDD


# ---------------------------------------------------------------------------------------------------
# The config
# ---------------------------------------------------------------------------------------------------


def _unwrap_config(cfg: Any, source: str) -> dict[str, Any]:
    """The hydra config dict (some hub versions nest it under a top-level `"config"` key)."""
    if not isinstance(cfg, dict):
        raise CheckpointError(f"SEDD config {source} must be a JSON object, got {type(cfg).__name__}")
    if "model" not in cfg and isinstance(cfg.get("config"), dict):
        cfg = cfg["config"]
    return cfg


def _looks_like_sedd(cfg: Any) -> bool:
    if not isinstance(cfg, dict) or "format_version" in cfg:  # ddm's own checkpoints carry a version
        return False
    if "model" not in cfg and isinstance(cfg.get("config"), dict):
        cfg = cfg["config"]
    return isinstance(cfg.get("model"), dict) and "hidden_size" in cfg["model"]


def _field(cfg: dict[str, Any], dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise CheckpointError(f"SEDD config is missing the field {dotted!r}")
        node = node[part]
    return node


def _int_field(cfg: dict[str, Any], dotted: str) -> int:
    v = _field(cfg, dotted)
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise CheckpointError(f"SEDD config field {dotted!r} must be a positive integer, got {v!r}")
    return v


def _float_field(cfg: dict[str, Any], dotted: str) -> float:
    v = _field(cfg, dotted)
    # YAML 1.1 reads `1e-4` as a string; the hydra config may carry numbers that way.
    try:
        if isinstance(v, bool):
            raise TypeError
        f = float(v)
    except (TypeError, ValueError):
        raise CheckpointError(f"SEDD config field {dotted!r} must be a number, got {v!r}") from None
    if not math.isfinite(f):
        raise CheckpointError(f"SEDD config field {dotted!r} must be finite, got {v!r}")
    return f


def _bool_field(cfg: dict[str, Any], dotted: str) -> bool:
    v = _field(cfg, dotted)
    if not isinstance(v, bool):
        raise CheckpointError(f"SEDD config field {dotted!r} must be true or false, got {v!r}")
    return v


def _build_model(cfg: dict[str, Any], tokenizer: Any) -> Any:
    """A `ScoreModel` (random weights) with the architecture, graph and schedule of a SEDD config."""
    kind = cfg["model"].get("type", "ddit")
    if kind != "ddit":
        raise CheckpointError(f"unsupported SEDD config: model.type = {kind!r} (only 'ddit' is supported)")
    hidden = _int_field(cfg, "model.hidden_size")
    heads = _int_field(cfg, "model.n_heads")
    blocks = _int_field(cfg, "model.n_blocks")
    cond_dim = _int_field(cfg, "model.cond_dim")
    length = _int_field(cfg, "model.length")
    tokens = _int_field(cfg, "tokens")
    scale_by_sigma = _bool_field(cfg, "model.scale_by_sigma")
    dropout = _float_field(cfg, "model.dropout") if "dropout" in cfg["model"] else 0.1
    if hidden % heads or (hidden // heads) % 2:
        raise CheckpointError(
            f"unsupported SEDD config: model.hidden_size = {hidden} must be divisible by model.n_heads = "
            f"{heads} into an even head size (rotary pairs)"
        )
    if not 0.0 <= dropout < 1.0:
        raise CheckpointError(f"SEDD config field 'model.dropout' must be in [0, 1), got {dropout!r}")

    graph_type = _field(cfg, "graph.type")
    if graph_type == "absorb":
        graph = Absorbing(tokens)
    elif graph_type == "uniform":
        graph = Uniform(tokens)
        if scale_by_sigma:
            # The reference asserts `absorb` when scale_by_sigma is set: such a model cannot run there.
            raise CheckpointError(
                "unsupported SEDD config: model.scale_by_sigma = true with graph.type = 'uniform' "
                "(the reference defines scale_by_sigma for the absorbing graph only)"
            )
    else:
        raise CheckpointError(
            f"unsupported SEDD config: graph.type = {graph_type!r} (expected 'absorb' or 'uniform')"
        )

    noise_type = _field(cfg, "noise.type")
    if noise_type == "loglinear":
        schedule = LogLinear(LOGLINEAR_EPS)  # sigma_min / sigma_max are ignored, as in the reference
    elif noise_type == "geometric":
        schedule = Geometric(_float_field(cfg, "noise.sigma_min"), _float_field(cfg, "noise.sigma_max"))
    else:
        raise CheckpointError(
            f"unsupported SEDD config: noise.type = {noise_type!r} (expected 'loglinear' or 'geometric')"
        )

    config = ModelConfig(
        hidden=hidden,
        heads=heads,
        blocks=blocks,
        cond_dim=cond_dim,
        mlp_ratio=MLP_RATIO,
        dropout=dropout,
        seq_len=length,
        time_conditioning=True,
        scale_by_sigma=scale_by_sigma,
    )
    return ScoreModel(config, graph, schedule, tokenizer=tokenizer)


# ---------------------------------------------------------------------------------------------------
# Names and shapes
# ---------------------------------------------------------------------------------------------------


def reference_parameter_shapes(cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The reference model's parameters, in `model.parameters()` order, with their shapes.

    The order is the one of `shadow_params` in the reference EMA state (the order of module
    registration: embedding, sigma map, blocks, output layer). The `rotary_emb.inv_freq` buffer is not a
    parameter and is not listed.

    Args:
        cfg: the SEDD (hydra) config dict.

    Returns:
        Ordered dict `name -> shape`.
    """
    cfg = _unwrap_config(cfg, "")
    D = _int_field(cfg, "model.hidden_size")
    C = _int_field(cfg, "model.cond_dim")
    n = _int_field(cfg, "model.n_blocks")
    dim = _int_field(cfg, "tokens") + (1 if cfg.get("graph", {}).get("type") == "absorb" else 0)
    shapes: dict[str, tuple[int, ...]] = {
        "vocab_embed.embedding": (dim, D),
        "sigma_map.mlp.0.weight": (C, FREQUENCY_DIM),
        "sigma_map.mlp.0.bias": (C,),
        "sigma_map.mlp.2.weight": (C, C),
        "sigma_map.mlp.2.bias": (C,),
    }
    for i in range(n):
        b = f"blocks.{i}."
        shapes.update(
            {
                b + "norm1.weight": (D,),
                b + "attn_qkv.weight": (3 * D, D),
                b + "attn_out.weight": (D, D),
                b + "norm2.weight": (D,),
                b + "mlp.0.weight": (MLP_RATIO * D, D),
                b + "mlp.0.bias": (MLP_RATIO * D,),
                b + "mlp.2.weight": (D, MLP_RATIO * D),
                b + "mlp.2.bias": (D,),
                b + "adaLN_modulation.weight": (6 * D, C),
                b + "adaLN_modulation.bias": (6 * D,),
            }
        )
    shapes.update(
        {
            "output_layer.norm_final.weight": (D,),
            "output_layer.linear.weight": (dim, D),
            "output_layer.linear.bias": (dim,),
            "output_layer.adaLN_modulation.weight": (2 * D, C),
            "output_layer.adaLN_modulation.bias": (2 * D,),
        }
    )
    return shapes


_PREFIX_MAP = (  # reference prefix -> ddm prefix; the first match wins
    ("vocab_embed.embedding", "embed.weight"),
    ("sigma_map.", "noise_embed."),
    ("output_layer.norm_final.", "final.norm."),
    ("output_layer.linear.", "final.linear."),
    ("output_layer.adaLN_modulation.", "final.modulation."),
)


def _to_ddm_name(name: str) -> str:
    for ref, ours in _PREFIX_MAP:
        if name.startswith(ref):
            return ours + name[len(ref) :]
    if name.startswith("blocks."):
        return name.replace(".attn_qkv.", ".qkv.").replace(".adaLN_modulation.", ".modulation.")
    raise CheckpointError(f"no ddm parameter for the reference tensor {name!r}")


def _pair_permutation(head_dim: int) -> torch.Tensor:
    """`perm` with `ddm[c] = ref[perm[c]]`: ddm's pair `(2j, 2j+1)` is the reference's `(j, j + hd/2)`."""
    half = torch.arange(head_dim // 2)
    return torch.stack([half, half + head_dim // 2], dim=-1).flatten()  # (head_dim,)


def _permute_qk(w: torch.Tensor, heads: int, perm: torch.Tensor) -> torch.Tensor:
    """Permutes the channels of each head of the query and key rows of a fused `[3 D, D]` qkv weight."""
    three_d, d_in = w.shape
    hd = three_d // (3 * heads)
    w = w.reshape(3, heads, hd, d_in)  # rows are (three, heads, head_dim), as the reference's rearrange
    qk = w[:2][:, :, perm]  # (2, heads, head_dim, D)
    return torch.cat([qk, w[2:]], dim=0).reshape(three_d, d_in)


def _expected_inv_freq(head_dim: int) -> torch.Tensor:
    return 1.0 / ROTARY_BASE ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)


def _check_state_dict(sd: dict[str, torch.Tensor], cfg: dict[str, Any], source: str) -> None:
    """Raises ValueError for a missing, unexpected or misshapen tensor (naming it and both shapes)."""
    shapes = reference_parameter_shapes(cfg)
    hd = _int_field(cfg, "model.hidden_size") // _int_field(cfg, "model.n_heads")
    allowed = set(shapes) | {ROTARY_KEY}
    missing = [k for k in shapes if k not in sd]
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise CheckpointError(f"SEDD weights in {source} are missing tensors: {missing[:5]}{more}")
    unexpected = sorted(str(k) for k in sd if k not in allowed)
    if unexpected:
        more = f" (and {len(unexpected) - 5} more)" if len(unexpected) > 5 else ""
        raise CheckpointError(
            f"SEDD weights in {source} have unexpected tensors for this config: {unexpected[:5]}{more}"
        )
    for k, shape in shapes.items():
        t = sd[k]
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(f"SEDD weights in {source}: {k!r} is a {type(t).__name__}, not a tensor")
        if tuple(t.shape) != shape:
            raise CheckpointError(
                f"SEDD weights in {source}: tensor {k!r} has shape {tuple(t.shape)}, the config needs {shape}"
            )
        if not t.is_floating_point():
            raise CheckpointError(f"SEDD weights in {source}: tensor {k!r} has dtype {t.dtype}, not floating")
    if ROTARY_KEY in sd:
        inv = sd[ROTARY_KEY]
        if not isinstance(inv, torch.Tensor) or tuple(inv.shape) != (hd // 2,):
            got = tuple(inv.shape) if isinstance(inv, torch.Tensor) else type(inv).__name__
            raise CheckpointError(
                f"SEDD weights in {source}: tensor {ROTARY_KEY!r} has shape {got}, the config needs "
                f"{(hd // 2,)}"
            )
        expected = _expected_inv_freq(hd).to(inv.dtype).float()  # a half-precision file rounds it
        if not inv.is_floating_point() or not torch.allclose(
            inv.float().cpu(), expected, rtol=1e-5, atol=0.0
        ):
            raise CheckpointError(
                f"unsupported SEDD weights in {source}: {ROTARY_KEY!r} is not the rotary frequencies "
                f"of base {ROTARY_BASE:g}"
            )


def from_reference_state_dict(sd: dict[str, torch.Tensor], cfg: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Reference (SEDD) parameter names and layout -> a `ScoreModel` state dict (float32).

    Args:
        sd: the reference state dict (`rotary_emb.inv_freq` optional).
        cfg: the SEDD config dict.

    Returns:
        The state dict for `ScoreModel.load_state_dict`.

    Raises:
        ValueError: a tensor is missing, unexpected or of the wrong shape.
    """
    return _convert(sd, _unwrap_config(cfg, ""), "the state dict")


def _convert(sd: dict[str, torch.Tensor], cfg: dict[str, Any], source: str) -> dict[str, torch.Tensor]:
    _check_state_dict(sd, cfg, source)
    heads = _int_field(cfg, "model.n_heads")
    perm = _pair_permutation(_int_field(cfg, "model.hidden_size") // heads)
    out: dict[str, torch.Tensor] = {}
    for k in reference_parameter_shapes(cfg):
        t = sd[k].detach().to(device="cpu", dtype=torch.float32)
        if k.endswith(".attn_qkv.weight"):
            t = _permute_qk(t, heads, perm)
        out[_to_ddm_name(k)] = t.contiguous()
    return out


def to_reference_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """A `ScoreModel`'s weights under the reference names and layout (inverse of the loader's mapping).

    A model built without noise input (`time_conditioning=False`) is exported exactly too: the
    reference always embeds sigma, so the first sigma-map layer is folded into a constant bias (its input
    for sigma = 0 is `[cos 0, sin 0] = [1, 0]`) and its weight set to 0.

    Args:
        model: a `ddm.model.ScoreModel`.

    Returns:
        Ordered reference state dict (float32, CPU, contiguous), including `rotary_emb.inv_freq`.
    """
    cfg = sedd_config(model)
    heads = model.config.heads
    inv_perm = torch.argsort(_pair_permutation(model.config.hidden // heads))
    ours = {k: v.detach().to(device="cpu", dtype=torch.float32) for k, v in model.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    for k, shape in reference_parameter_shapes(cfg).items():
        t = ours[_to_ddm_name(k)]
        if k.endswith(".attn_qkv.weight"):
            t = _permute_qk(t, heads, inv_perm)
        if tuple(t.shape) != shape:  # pragma: no cover - guards against a change of ddm's network
            raise InvalidArgument(
                f"ddm tensor {_to_ddm_name(k)!r} has shape {tuple(t.shape)}, expected {shape}"
            )
        out[k] = t.clone().contiguous()
    if not model.config.time_conditioning:
        w, b = out["sigma_map.mlp.0.weight"], out["sigma_map.mlp.0.bias"]
        out["sigma_map.mlp.0.bias"] = b + w[:, : FREQUENCY_DIM // 2].sum(dim=1)  # W [1..1, 0..0] + b
        out["sigma_map.mlp.0.weight"] = torch.zeros_like(w)
    out[ROTARY_KEY] = _expected_inv_freq(model.config.hidden // heads)
    return out


def sedd_config(model: Any) -> dict[str, Any]:
    """The SEDD (hydra) config dict of a `ScoreModel` (the fields the reference model reads).

    Raises:
        ValueError: the model has no reference equivalent (MLP ratio other than 4, an unsupported schedule).
    """
    c = model.config
    if c.mlp_ratio != MLP_RATIO:
        raise InvalidArgument(f"SEDD's network has an MLP ratio of {MLP_RATIO}, the model has {c.mlp_ratio}")
    absorbing = is_absorbing(model.graph)
    if not absorbing and c.scale_by_sigma:
        raise InvalidArgument("SEDD's scale_by_sigma is defined for the absorbing graph only")
    sched = model.schedule
    if isinstance(sched, LogLinear):
        if not math.isclose(sched.eps, LOGLINEAR_EPS, rel_tol=1e-12):
            raise InvalidArgument(
                f"SEDD's loglinear noise has eps = {LOGLINEAR_EPS:g}, "
                f"the model's schedule has eps = {sched.eps:g}"
            )
        noise = {"type": "loglinear", "sigma_min": 1e-4, "sigma_max": 20.0}
    elif isinstance(sched, Geometric):
        noise = {"type": "geometric", "sigma_min": sched.sigma_min, "sigma_max": sched.sigma_max}
    else:
        raise InvalidArgument(f"SEDD has no noise schedule like {type(sched).__name__}")
    return {
        "tokens": int(model.graph.vocab_size),
        "model": {
            "name": "ddm",
            "type": "ddit",
            "hidden_size": c.hidden,
            "cond_dim": c.cond_dim,
            "length": c.seq_len,
            "n_blocks": c.blocks,
            "n_heads": c.heads,
            "scale_by_sigma": bool(absorbing and c.scale_by_sigma),
            "dropout": c.dropout,
        },
        "graph": {"type": "absorb" if absorbing else "uniform"},
        "noise": noise,
    }


# ---------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"SEDD config {str(path)!r} is not valid JSON: {e}") from None


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"corrupt or unreadable safetensors file {str(path)!r}: {e}") from None


def _read_pickle(path: Path) -> Any:
    """`torch.load` restricted to tensors and plain containers: a pickle that runs code is refused."""
    try:
        return torch.load(str(path), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        # torch's weights-only unpickler: a forbidden GLOBAL (a function or class: code), or an opcode it
        # does not accept (garbled data, or a plain pickle that torch.save did not write).
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        detail = next((ln for ln in lines if "GLOBAL" in ln), None)
        if detail is not None:
            raise CheckpointError(
                f"refusing to load {str(path)!r}: the pickle references code ({detail}); a checkpoint is "
                "data, never code, and is read with torch.load(weights_only=True)"
            ) from None
        detail = next((ln for ln in lines if ln.startswith("Unsupported")), lines[-1] if lines else "")
        raise CheckpointError(
            f"refusing to load {str(path)!r}: not plain tensor data (corrupt, or a pickle that "
            f"torch.load(weights_only=True) rejects: {detail})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, KeyError, IndexError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"corrupt or unreadable checkpoint file {str(path)!r}: {reason}") from None


def _strip_prefix(sd: dict[str, Any]) -> dict[str, Any]:
    """Drops a `module.` (DistributedDataParallel) or `_orig_mod.` (torch.compile) prefix on every key."""
    for prefix in ("module.", "_orig_mod."):
        if sd and all(isinstance(k, str) and k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def _weights_from_training_checkpoint(
    state: dict[str, Any], cfg: dict[str, Any], ema: bool, source: str
) -> dict[str, torch.Tensor]:
    """The state dict of a reference `checkpoint.pth`, with the EMA weights substituted when present."""
    model_sd = state.get("model")
    if not isinstance(model_sd, dict):
        raise CheckpointError(f"SEDD checkpoint {source} has no 'model' state dict")
    sd = dict(_strip_prefix(model_sd))
    ema_state = state.get("ema") if ema else None
    if ema_state is None:
        return sd
    shadow = ema_state.get("shadow_params") if isinstance(ema_state, dict) else None
    if not isinstance(shadow, (list, tuple)):
        raise CheckpointError(f"SEDD checkpoint {source}: 'ema' has no 'shadow_params' list")
    shapes = reference_parameter_shapes(cfg)
    if len(shadow) != len(shapes):
        raise CheckpointError(
            f"SEDD checkpoint {source}: ema.shadow_params has {len(shadow)} tensors, the config's model "
            f"has {len(shapes)} parameters"
        )
    for (name, shape), t in zip(shapes.items(), shadow, strict=True):
        if not isinstance(t, torch.Tensor):
            raise CheckpointError(
                f"SEDD checkpoint {source}: ema.shadow_params entry for {name!r} is not a tensor"
            )
        if tuple(t.shape) != shape:
            raise CheckpointError(
                f"SEDD checkpoint {source}: ema.shadow_params entry for tensor {name!r} has shape "
                f"{tuple(t.shape)}, the config needs {shape}"
            )
        sd[name] = t
    return sd


def _locate(path: Path, config: Any) -> tuple[Path, dict[str, Any]]:
    """(weights file, config dict) for a directory or a file."""
    if not path.exists():
        raise FileNotFoundError(f"no SEDD checkpoint at {str(path)!r}")
    if path.is_dir():
        found = [path / name for name in WEIGHT_FILES if (path / name).is_file()]
        if not found:
            raise FileNotFoundError(
                f"SEDD checkpoint directory {str(path)!r} has none of {list(WEIGHT_FILES)}"
            )
        weights, cfg_dir = found[0], path
    else:
        weights, cfg_dir = path, path.parent
    if config is None:
        cfg_path = cfg_dir / "config.json"
        if not cfg_path.is_file():
            raise FileNotFoundError(
                f"no config.json beside {str(weights)!r} (pass config= with the SEDD training config)"
            )
        config, source = _read_json(cfg_path), repr(str(cfg_path))
    elif isinstance(config, (str, os.PathLike)):
        source = repr(str(config))
        config = _read_json(Path(config))
    else:
        source = "(argument)"
    return weights, _unwrap_config(config, source)


def _default_tokenizer(tokens: int) -> Any:
    if tokens != 50257:
        return None
    try:
        return tokenizers.get("gpt2")
    except Exception as e:  # noqa: BLE001 - the tokenizer is optional (the `gpt2` extra)
        warnings.warn(f"GPT-2 tokenizer unavailable ({e}); the model has no tokenizer", stacklevel=3)
        return None


def load_sedd(
    path: str | os.PathLike,
    *,
    config: dict[str, Any] | str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    ema: bool = True,
    tokenizer: Any = "auto",
) -> Any:
    """Loads a published SEDD checkpoint into ddm's `ScoreModel` (eval mode), ready for `ddm.sample`.

    Accepted layouts:

    - a directory with `config.json` and `model.safetensors` or `pytorch_model.bin` (Hugging Face
      `PyTorchModelHubMixin`, e.g. a download of `louaaron/sedd-small`), or `checkpoint.pth`;
    - a file: `checkpoint.pth` of the reference training code (`{"model", "ema", "optimizer", "step"}`;
      the EMA weights are used when present and `ema=True`), `*.safetensors` or `*.bin`, with the
      config in `config.json` beside it or given as `config`.

    Args:
        path: the directory or file.
        config: the SEDD config (a dict or a JSON file) when it is not in `config.json` beside `path`.
        device: where the weights go (default CPU).
        ema: use the EMA weights of a `checkpoint.pth` (default) or its raw weights.
        tokenizer: `"auto"` (GPT-2 when `tokens == 50257` and the tokenizer is installed, else None),
            None, or a tokenizer object.

    Returns:
        The `ScoreModel` with `graph` (`Absorbing(tokens)` or `Uniform(tokens)`), `schedule` (LogLinear
        with eps 1e-3, or Geometric), `seq_len = model.length`, `tokenizer`, `checkpoint_path` and
        `sedd_config` (the config dict) set. Its `forward(x, sigma)` computes the reference network's
        log-score for the same weights.

    Raises:
        FileNotFoundError: no such path, no weights file or no config.
        ValueError: an unsupported config (naming the field and value), a missing, unexpected or
            misshapen tensor (naming it and both shapes), a corrupt file, or a pickle that is not plain
            tensor data.
    """
    path = Path(path)
    weights, cfg = _locate(path, config)
    source = repr(str(weights))
    if "format_version" in cfg:
        raise CheckpointError(f"{str(path)!r} is a ddm checkpoint, not a SEDD one: load it with ddm.load")
    if tokenizer == "auto":
        tokenizer = _default_tokenizer(_int_field(cfg, "tokens"))
    model = _build_model(cfg, tokenizer)

    suffix = weights.suffix.lower()
    if suffix == ".safetensors":
        state: Any = _read_safetensors(weights)
    elif suffix in (".pth", ".pt", ".bin", ".ckpt"):
        state = _read_pickle(weights)
    else:
        raise CheckpointError(
            f"unknown SEDD weights file {str(weights)!r} (expected .safetensors, .pth, .pt, .bin or .ckpt)"
        )
    if not isinstance(state, dict):
        raise CheckpointError(
            f"SEDD weights in {source} must be a dict of tensors, got {type(state).__name__}"
        )
    if isinstance(state.get("model"), dict):  # a training checkpoint
        sd = _weights_from_training_checkpoint(state, cfg, ema, source)
    else:
        sd = _strip_prefix(state)
    model.load_state_dict(_convert(sd, cfg, source), strict=True)
    model.to(torch.device(device) if device is not None else torch.device("cpu")).eval()
    model.checkpoint_path = path
    model.sedd_config = cfg
    return model


def is_sedd_checkpoint(path: str | os.PathLike) -> bool:
    """True when `path` is a SEDD checkpoint (a directory, or a weights file, with a SEDD `config.json`).

    ddm's own checkpoints (their `config.json` has a `format_version`) and run directories give False.
    """
    path = Path(path)
    cfg_dir = path if path.is_dir() else path.parent
    if path.is_file() and path.suffix.lower() not in (".safetensors", ".pth", ".pt", ".bin", ".ckpt"):
        return False
    cfg_path = cfg_dir / "config.json"
    if not cfg_path.is_file():
        return False
    try:
        return _looks_like_sedd(_read_json(cfg_path))
    except (ValueError, OSError):
        return False


def export_sedd(model: Any, path: str | os.PathLike) -> Path:
    """Writes a `ScoreModel` in the reference (Hugging Face) layout: `config.json` + `model.safetensors`.

    The directory is written to a temporary sibling and renamed into place; an existing directory at
    `path` is an error. `load_sedd(path)` gives back a model with identical outputs, and the reference
    code's `SEDD.from_pretrained(path)` reads it.

    Args:
        model: a `ddm.model.ScoreModel`.
        path: the directory to create.

    Returns:
        The directory.

    Raises:
        ValueError: the model has no reference equivalent (see `sedd_config`), or `path` exists.
    """
    path = Path(path)
    if path.exists():
        raise InvalidArgument(f"export path {str(path)!r} already exists")
    cfg = sedd_config(model)
    sd = to_reference_state_dict(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _fs.atomic_path(path) as tmp:
        tmp.mkdir()
        save_file(sd, str(tmp / "model.safetensors"))
        with open(tmp / "config.json", "w", encoding="utf-8") as f:
            json.dump(cfg, f, indent=2)
            f.write("\n")
        for f in tmp.iterdir():
            _fs.fsync_file(f)
    return path
