"""Reading and writing models: ddm's checkpoints (`ddm.io.checkpoint`), the SEDD reference format
(`ddm.io.sedd`) and the Hugging Face Hub layout (`ddm.io.hub`). `load` reads any of them, and Hub ids
`"user/repo"` through the local Hugging Face cache; it is what `ddm.load` and the command line use.
"""

from __future__ import annotations

from ddm.io import checkpoint, hub
from ddm.io.hub import load, push_to_hub, save_pretrained
from ddm.io.sedd import export_sedd, is_sedd_checkpoint, load_sedd

__all__ = [
    "checkpoint",
    "export_sedd",
    "hub",
    "is_sedd_checkpoint",
    "load",
    "load_sedd",
    "push_to_hub",
    "save_pretrained",
]
