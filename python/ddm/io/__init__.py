"""Reading and writing models: ddm's checkpoints (`ddm.io.checkpoint`) and the SEDD reference format
(`ddm.io.sedd`). `load` reads either kind and is what `ddm.load` and the command line use.
"""

from __future__ import annotations

from ddm.io import checkpoint
from ddm.io.sedd import export_sedd, is_sedd_checkpoint, load_sedd
from ddm.io.sedd import load_model as load

__all__ = ["checkpoint", "export_sedd", "is_sedd_checkpoint", "load", "load_sedd"]
