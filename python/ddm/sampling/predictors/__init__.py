"""The predictors: one module each, one registry (`ddm.sampling.predictors.base`).

- `analytic`: Tweedie tau-leaping; `euler`: Euler tau-leaping (grid predictors);
- `first_hitting`: exact, one unmasking event per call; `confidence`: parallel decoding by score;
- `remdm`: ReMDM remasking (what `predictor="analytic", remask=eta` runs).

`build(predictor, **options)` turns a name and `ddm.sample`'s keywords into a `Predictor`.
"""

from __future__ import annotations

from typing import Any

from ddm.errors import InvalidArgument
from ddm.sampling.predictors import analytic, confidence, euler, first_hitting, remdm  # noqa: F401 (register)
from ddm.sampling.predictors.base import (
    Config,
    Grid,
    GridPredictor,
    Predictor,
    get,
    names,
    option_fields,
    option_types,
    register,
    unregister,
)

__all__ = [
    "Config",
    "Grid",
    "GridPredictor",
    "Predictor",
    "build",
    "get",
    "names",
    "option_fields",
    "option_types",
    "register",
    "unregister",
]

_GRID_NAMES = ("analytic", "euler", "remdm")


def build(predictor: Any = "analytic", **options: Any) -> Predictor:
    """The predictor `predictor` (a registered name or a `Predictor`) with `options`, checked.

    `remask=eta` (not None) on a grid predictor selects ReMDM (`predictors.remdm`); `remask=None` is no
    remasking. An option of another predictor at its default value is accepted and ignored (every keyword
    of `ddm.sample` has a default); any other is an `InvalidArgument` naming it.
    """
    if isinstance(predictor, Predictor):
        if options:
            raise InvalidArgument(
                f"options {sorted(options)} go into the predictor's config when a Predictor object is given"
            )
        return predictor
    options = dict(options)
    if options.get("remask") is not None:
        if predictor not in _GRID_NAMES:
            raise InvalidArgument(
                f"remask is an option of the grid predictors (analytic, euler), not {predictor!r}"
            )
        predictor = "remdm"
    elif "remask" in options and predictor != "remdm":
        del options["remask"]  # None: no remasking
    cls = get(predictor)
    own = {f for f in cls.config_class.__dataclass_fields__}
    known = option_fields()
    for key in [k for k in options if k not in own and k in known]:
        if options[key] == known[key][0].default:
            del options[key]  # another predictor's option, at its default: nothing to do
    return cls(**options)
