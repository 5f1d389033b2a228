"""How generation tasks write an answer, declared once: ``ptuning predict``'s flags, and what the library's
generation takes (``generation.generate_from_ids``); no torch here, so ``--help`` stays light."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .settings import at_least, check_settings, non_negative, setting

# a temperature below this is read as 0 (greedy, its limit): dividing float32 logits by it would overflow to inf
SMALLEST_TEMPERATURE = 1e-20


def samples_at(temperature: float) -> bool:
    """Whether ``temperature`` samples (else greedy)."""
    return temperature >= SMALLEST_TEMPERATURE


def probability_mass(value: float) -> str | None:
    return None if 0 < value <= 1 else "must be in (0, 1]"


@dataclass
class Writing:
    """Generation settings of one call (each a flag of ``ptuning predict``), or of one served request's prompts (whose
    stop strings, a list, the server keeps beside them); ``decoding.choose`` picks tokens as they say."""

    max_new_tokens: int | None = setting(
        None, "generation: tokens written at most per answer", check=at_least(1), default_help="each task's own"
    )
    temperature: float = setting(0.0, "generation: 0 writes greedily; above 0 samples at it", check=non_negative)
    top_p: float = setting(
        1.0, "generation: sample from the most likely tokens up to this mass", check=probability_mass
    )
    seed: int | None = setting(None, "generation: seed of the sampling (the same seed, the same answers)")
    stop: str | None = setting(None, "generation: a stop string; an answer ends before it")

    def __post_init__(self) -> None:
        check_settings(self)

    @property
    def sampled(self) -> bool:
        return samples_at(self.temperature)

    def generation_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``generate_from_ids`` these settings give (a task's own answer length unless
        one is given)."""
        values = asdict(self)
        if values["max_new_tokens"] is None:
            del values["max_new_tokens"]
        return values
