"""ptuning: P-Tuning v2 (deep prompt tuning) for frozen transformers encoders."""

from .config import PromptConfig
from .errors import CheckpointError, DataError, PtuningError, UnsupportedModelError
from .model import PromptedModel

__all__ = ["CheckpointError", "DataError", "PromptConfig", "PromptedModel", "PtuningError", "UnsupportedModelError"]
__version__ = "0.1.0"
