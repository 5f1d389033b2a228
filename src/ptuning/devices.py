"""Where a run computes and in what precision: resolved once, refused with a message where the machine cannot."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import PtuningError

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda", "mps")
DEVICE_HELP = "where to run (auto: a CUDA or MPS accelerator when present, else the CPU)"
FORWARD_TOKENS = 256  # small forwards suit a CPU; chosen by benchmarks/forward_tokens.py (docs/serving.md)
FORWARD_TOKENS_HELP = (
    "padded tokens (rows x longest row) in one forward pass at most: inputs run as several forwards, the shortest "
    "together (small suits a CPU; raise it on a GPU)"
)
PRECISIONS = ("fp32", "bf16", "fp16")  # torch loads only when a run resolves them: --help stays instant
INFERENCE_PRECISION_HELP = (
    "fp32, or bf16/fp16: the frozen backbone held in that type (half its memory), the prompts and heads in fp32"
)


def dtype_of(precision: str) -> torch.dtype:
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def _mps_available() -> bool:
    import torch

    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def resolve_device(name: str) -> torch.device:
    """``auto``: a CUDA device when present, else Apple's MPS, else the CPU; a named device must be present."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        build = f"torch {torch.__version__}" + ("" if torch.version.cuda else ", a build without CUDA")
        raise PtuningError(f"--device cuda: no CUDA device is available ({build}); use --device cpu or auto")
    if name == "mps" and not _mps_available():
        raise PtuningError("--device mps: Apple's MPS is not available here; use --device cpu or auto")
    if name not in DEVICES:
        raise PtuningError(f"unknown device {name!r}; choose from {', '.join(DEVICES)}")
    return torch.device(name)


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse a mixed precision the device cannot train or predict in."""
    import torch

    if precision == "fp16" and device.type == "cpu":
        raise PtuningError("--precision fp16 needs a GPU (CUDA or MPS); on a CPU use bf16 or fp32")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise PtuningError(f"--precision bf16: {torch.cuda.get_device_name(device)} has no bfloat16; use fp16 or fp32")
    if precision == "bf16" and device.type == "mps":
        raise PtuningError("--precision bf16 is not supported on MPS here; use fp16 or fp32")


def inference_device(device: str, precision: str) -> torch.device:
    """The resolved device, refused with a message (before anything loads) where it lacks ``precision``."""
    resolved = resolve_device(device)
    check_precision(precision, resolved)
    return resolved


def place(model, device: torch.device, precision: str = "fp32"):
    """``model`` (a PromptedModel) on ``device`` with its frozen backbone held in ``precision`` (a fine-tuned
    backbone stays fp32 and is refused with a message)."""
    if precision != "fp32":
        model.cast_backbone(dtype_of(precision))
    return model.to(device)
