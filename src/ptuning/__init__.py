"""ptuning: P-Tuning v2 (deep prompt tuning) for frozen transformers encoders."""

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from .config import PromptConfig
from .errors import CheckpointError, DataError, PtuningError, UnsupportedModelError

if TYPE_CHECKING:
    from .model import PromptedModel

__all__ = ["CheckpointError", "DataError", "PromptConfig", "PromptedModel", "PtuningError", "UnsupportedModelError"]
try:
    __version__ = version("ptuning")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "unknown"


def __getattr__(name: str) -> Any:
    """``PromptedModel`` is imported on first use: the command line starts without torch and transformers."""
    if name == "PromptedModel":
        from .model import PromptedModel

        return PromptedModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
