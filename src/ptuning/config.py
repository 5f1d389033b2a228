"""PromptConfig: how continuous prompts enter a frozen model, serializable next to the weights."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from .errors import PtuningError
from .settings import at_least, check_settings, setting, share

METHODS = ("deep", "shallow", "ptuning-v1", "finetune", "linear-probe", "prompting")
PROMPTED_METHODS = ("deep", "shallow", "ptuning-v1")
REPARAMS = {"deep": (None, "mlp"), "shallow": (None,), "ptuning-v1": ("lstm", "mlp")}
INITS = ("random", "vocab", "text")
INITIALIZED_METHODS = ("deep", "shallow")  # the methods a prompt_init other than random applies to
# how a text becomes one vector for sequence heads (heads.pool): first token, mean, last real token, backbone pooler
POOLINGS = ("cls", "mean", "last", "pooler")


@dataclass
class PromptConfig:
    """Settings of the prompt; each field's help is its documentation, and its ``key`` its name in recipes and
    flags (``--prompt-length``).

    ``deep`` is P-Tuning v2: trainable key/value vectors prepended in the self-attention of every layer in
    ``layers``. ``shallow`` is prompt tuning (Lester et al.): trainable embeddings prepended at the input only;
    ``ptuning-v1``: input prompts produced by a prompt encoder; ``finetune``: no prompt, every backbone weight
    trains; ``linear-probe``: no prompt, only the head trains; ``prompting``: a discrete prompt (a template and label
    words scored by the backbone's language-modelling head), nothing trains. A reparameterization is folded into a
    flat table on save either way.
    """

    method: str = setting("deep", "deep is P-Tuning v2; the others are the baselines", choices=METHODS)
    length: int = setting(16, "prompt vectors (per layer for deep)", key="prompt_length", check=at_least(1))
    layers: list[int] | None = setting(None, "layer indices to prompt", key="prompt_layers", default_help="all layers")
    reparam: str | None = setting(
        None,
        "deep: none, or mlp (Embedding -> Linear -> Tanh -> Linear, the paper's); ptuning-v1: lstm or mlp",
        default_help="none; lstm for ptuning-v1",
        nullable=True,
    )
    reparam_hidden: int = setting(512, "hidden width of the reparameterization", check=at_least(1))
    init: str = setting(
        "random",
        "where the prompt starts: random; vocab: real tokens drawn from the vocabulary; text: the tokens of "
        "prompt_init_text, repeated to the prompt length (shallow: their embeddings; deep: the keys/values the frozen "
        "backbone computes for them in every layer, Li and Liang's initialization)",
        key="prompt_init",
        choices=INITS,
    )
    init_text: str | None = setting(None, "the text a prompt_init text prompt starts from", key="prompt_init_text")
    dropout: float = setting(0.1, "dropout on the prompt vectors while training", key="prompt_dropout", check=share)
    shift_positions: bool = setting(
        False, "shift the text's position ids by the prompt length, as the reference code and PEFT do"
    )
    backbone_dropout: bool = setting(
        True, "train with the backbone's own dropout (off: faster CPU steps, the head keeps its own)"
    )

    def __post_init__(self) -> None:
        check_settings(self)
        if self.method == "ptuning-v1" and self.reparam is None:
            self.reparam = "lstm"
        allowed = REPARAMS.get(self.method, (None,))
        if self.reparam not in allowed:
            raise PtuningError(f"reparam {self.reparam!r} does not apply to method {self.method!r}; allowed: {allowed}")
        if self.init != "random" and (self.method not in INITIALIZED_METHODS or self.reparam is not None):
            raise PtuningError(
                f"prompt_init {self.init!r} starts a flat {' or '.join(INITIALIZED_METHODS)} prompt, not "
                f"{self.method!r}{' with reparam ' + repr(self.reparam) if self.reparam else ''}"
            )
        if (self.init == "text") != bool(self.init_text):
            raise PtuningError("prompt_init text and prompt_init_text go together (a non-empty text)")
        if self.layers is not None:
            if not self.layers:
                raise PtuningError("layers must name at least one layer, or be None for every layer")
            if any(layer < 0 for layer in self.layers) or len(set(self.layers)) != len(self.layers):
                raise PtuningError(f"layers must be distinct non-negative indices, got {self.layers}")
            self.layers = sorted(self.layers)

    @property
    def has_prompt(self) -> bool:
        return self.method in PROMPTED_METHODS

    def prompted_layers(self, num_layers: int) -> list[int]:
        """The layer indices that receive a prompt in a backbone of ``num_layers`` layers."""
        if self.layers is None:
            return list(range(num_layers))
        too_deep = [layer for layer in self.layers if layer >= num_layers]
        if too_deep:
            raise PtuningError(f"prompt layers {too_deep} do not exist: the backbone has {num_layers} layers")
        return list(self.layers)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PromptConfig:
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise PtuningError(f"unknown prompt settings {unknown}; known: {sorted(known)}")
        return cls(**values)
