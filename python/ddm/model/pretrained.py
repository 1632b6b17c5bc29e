"""The Hugging Face Hub convention's methods on a model class, with no storage code in the model layer.

`PretrainedMixin` gives a model `save_pretrained`, `from_pretrained` and `push_to_hub`, as
`huggingface_hub.PyTorchModelHubMixin` does. The model layer only states what it needs (the
`PretrainedStorage` protocol); the io layer, which knows the formats, provides it with
`register_storage` when `ddm.io` is imported (which `import ddm` does). So the dependency points down,
model <- io, and the model layer never imports io.
"""

from __future__ import annotations

from typing import Any, Protocol

from ddm.errors import DdmError, InvalidArgument

__all__ = ["PretrainedMixin", "PretrainedStorage", "register_storage"]


class PretrainedStorage(Protocol):
    """What the io layer provides for the Hub methods (`ddm.io` registers it)."""

    def save_pretrained(self, model: Any, save_directory: Any, **kwargs: Any) -> Any: ...

    def load(self, name_or_path: Any, **kwargs: Any) -> Any: ...

    def push_to_hub(self, model: Any, repo_id: str, **kwargs: Any) -> Any: ...


_storage: PretrainedStorage | None = None


def register_storage(storage: PretrainedStorage) -> None:
    """Installs the io layer's implementation of the Hub methods (called once by `ddm.io`)."""
    global _storage
    for name in ("save_pretrained", "load", "push_to_hub"):
        if not callable(getattr(storage, name, None)):
            raise InvalidArgument(f"a pretrained storage needs a callable {name!r}, {storage!r} has none")
    _storage = storage


def _registered() -> PretrainedStorage:
    if _storage is None:
        raise DdmError("the Hub methods need ddm's io layer: import ddm (or ddm.io) first")
    return _storage


class PretrainedMixin:
    """`save_pretrained`, `from_pretrained` and `push_to_hub`, delegated to the registered storage."""

    def save_pretrained(self, save_directory: Any, **kwargs: Any) -> Any:
        """Writes the Hugging Face Hub layout (`config.json`, `model.safetensors`, a model card
        `README.md`) into `save_directory`; see `ddm.io.hub.save_pretrained` for the keyword arguments."""
        return _registered().save_pretrained(self, save_directory, **kwargs)

    @classmethod
    def from_pretrained(cls, name_or_path: Any, **kwargs: Any) -> Any:
        """Loads a Hub id `"user/repo"` (through the local Hugging Face cache) or a local directory in
        eval mode; see `ddm.io.load` for the keyword arguments.

        Raises:
            TypeError: the path holds another kind of model.
        """
        model = _registered().load(name_or_path, **kwargs)
        if not isinstance(model, cls):
            raise InvalidArgument(f"{name_or_path!r} holds a {type(model).__name__}, not a {cls.__name__}")
        return model

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> Any:
        """Uploads the `save_pretrained` layout to the Hub repository `repo_id` (created if needed); see
        `ddm.io.hub.push_to_hub` for the keyword arguments."""
        return _registered().push_to_hub(self, repo_id, **kwargs)
