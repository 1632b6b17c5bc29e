"""Reading and writing models: ddm's checkpoints (`ddm.io.checkpoint`), the SEDD reference format
(`ddm.io.sedd`) and the Hugging Face Hub layout (`ddm.io.hub`). `load` (`ddm.io.load`, the one router of
formats) reads any of them, and Hub ids `"user/repo"` through the local Hugging Face cache; it is what
`ddm.load` and the command line use.

Importing this package installs the Hub methods of `ddm.model.ScoreModel` (`save_pretrained`,
`from_pretrained`, `push_to_hub`): the model layer declares them, the io layer implements them
(`ddm.model.pretrained.register_storage`), so that no import points from the model up to io.
"""

from __future__ import annotations

import types

from ddm.io import checkpoint, hub
from ddm.io.hub import push_to_hub, save_pretrained
from ddm.io.load import load
from ddm.io.sedd import export_sedd, is_sedd_checkpoint, load_sedd
from ddm.model.pretrained import register_storage

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

register_storage(types.SimpleNamespace(save_pretrained=save_pretrained, load=load, push_to_hub=push_to_hub))
