"""PromptConfig: how continuous prompts enter a frozen model, serializable next to the weights."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from .errors import PtuningError

METHODS = ("deep", "shallow", "ptuning-v1", "finetune", "linear-probe")
PROMPTED_METHODS = ("deep", "shallow", "ptuning-v1")
REPARAMS = {"deep": (None, "mlp"), "shallow": (None,), "ptuning-v1": ("lstm", "mlp")}
INITS = ("random", "vocab")
# how a text becomes one vector for sequence heads (heads.pool): first token, mean, last real token, backbone pooler
POOLINGS = ("cls", "mean", "last", "pooler")


@dataclass
class PromptConfig:
    """Settings of the prompt.

    method: ``"deep"`` is P-Tuning v2: trainable key/value vectors prepended in the self-attention of
        every layer in ``layers`` (``None`` = all layers). ``"shallow"`` is prompt tuning (Lester et al.):
        trainable embeddings prepended at the input only. ``"ptuning-v1"``: input prompts produced by a
        prompt encoder. ``"finetune"``: no prompt, every backbone weight trains. ``"linear-probe"``: no
        prompt, only the head trains.
    length: number of prompt vectors (per layer for ``deep``).
    reparam: how the prompt table is produced. ``deep``: ``None`` trains the table directly, ``"mlp"``
        goes through Embedding -> Linear -> Tanh -> Linear (the paper's reparameterization).
        ``ptuning-v1``: ``"lstm"`` (bidirectional LSTM + MLP, default) or ``"mlp"``. Folded into a flat
        table on save either way.
    reparam_hidden: width of the reparameterization's hidden layer.
    init: ``shallow`` only: ``"random"`` or ``"vocab"`` (copies of random vocabulary embeddings).
    dropout: dropout on the prompt vectors during training (the reference code uses 0.1).
    shift_positions: ``True`` shifts the text's position ids by ``length`` as the reference code and PEFT
        do (text may then only be ``max_position_embeddings - length`` long); ``False`` keeps them.
    backbone_dropout: ``True`` keeps the backbone's own dropout active in training, as the reference code
        and PEFT do; ``False`` runs the backbone without dropout (the task head keeps its own). Dropout masks
        are ~12% of a MiniLM training step on CPU (profiled).
    """

    method: str = "deep"
    length: int = 16
    layers: list[int] | None = None
    reparam: str | None = None
    reparam_hidden: int = 512
    init: str = "random"
    dropout: float = 0.1
    shift_positions: bool = False
    backbone_dropout: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise PtuningError(f"unknown prompt method {self.method!r}; supported: {', '.join(METHODS)}")
        if self.method == "ptuning-v1" and self.reparam is None:
            self.reparam = "lstm"
        allowed = REPARAMS.get(self.method, (None,))
        if self.reparam not in allowed:
            raise PtuningError(f"reparam {self.reparam!r} does not apply to method {self.method!r}; allowed: {allowed}")
        if self.init not in INITS:
            raise PtuningError(f"unknown init {self.init!r}; supported: {', '.join(INITS)}")
        if self.length < 1:
            raise PtuningError(f"prompt length must be at least 1, got {self.length}")
        if self.reparam_hidden < 1:
            raise PtuningError(f"reparam_hidden must be at least 1, got {self.reparam_hidden}")
        if not 0.0 <= self.dropout < 1.0:
            raise PtuningError(f"prompt dropout must be in [0, 1), got {self.dropout}")
        if self.layers is not None:
            if not self.layers:
                raise PtuningError("layers must name at least one layer, or be None for every layer")
            if any(layer < 0 for layer in self.layers) or len(set(self.layers)) != len(self.layers):
                raise PtuningError(f"layers must be distinct non-negative indices, got {self.layers}")
            self.layers = sorted(self.layers)

    @property
    def has_prompt(self) -> bool:
        return self.method in PROMPTED_METHODS

    @property
    def input_level(self) -> bool:
        """Whether the prompt is a sequence of input embeddings (shallow, P-tuning v1) rather than per-layer."""
        return self.method in ("shallow", "ptuning-v1")

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
