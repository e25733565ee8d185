"""A TorchServe archive (.mar) of a registered version: `modelyard export torchserve <task> [--version N]`.

    torch-model-archiver --model-name <task> --version <N> --handler torchserve_handler.py \
        --serialized-file model.pt --extra-files model.json,torchserve.json,modelyard-code.zip
    torchserve --start --ncs --model-store artifacts/torchserve --models <task>=<task>.mar

The archive holds the version's weights and spec (model.json: family, builder arguments, fitted preprocessing,
labels), modelyard's own code as a zip (the model's classes and the preprocessing; the handler puts it on the
path where TorchServe's Python lacks modelyard), and the handler (modelyard.inference.torchserve_handler),
which decodes each request with the modality's codec and predicts with the Predictor: Ray Serve's code, so
the two servers answer alike. The archive is built by the real `torch-model-archiver`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from modelyard.inference import torchserve_handler
from modelyard.registry import versions

log = logging.getLogger(__name__)


def export_archive(tracking_uri: str, name: str, out_dir: str | os.PathLike[str], *, version: str | None = None,
                   alias: str = "champion") -> Path:
    """Build `<out_dir>/<name>.mar` from version `version` of `name` (its `alias` when no version is given);
    returns its path. Raises LookupError when there is no such version."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with versions.fetched_model_dir(tracking_uri, name, version=version, alias=None if version else alias) as (
            model_dir, mv), tempfile.TemporaryDirectory(prefix="modelyard-mar-") as tmp:
        stage = Path(tmp)
        meta = {"name": name, "version": str(mv.version), "run_id": mv.run_id,
                "source": f"models:/{name}/{mv.version}", "tracking_uri": tracking_uri}
        (stage / torchserve_handler.ARCHIVE_META).write_text(json.dumps(meta, indent=2) + "\n")
        shutil.copy(Path(model_dir) / "model.json", stage / "model.json")
        _zip_code(stage / torchserve_handler.CODE_ZIP)
        handler = shutil.copy(torchserve_handler.__file__, stage / "torchserve_handler.py")
        extra = [stage / "model.json", stage / torchserve_handler.ARCHIVE_META, stage / torchserve_handler.CODE_ZIP]
        cmd = [_archiver(), "--model-name", name, "--version", str(mv.version), "--handler", str(handler),
               "--serialized-file", str(Path(model_dir) / "model.pt"), "--extra-files", ",".join(map(str, extra)),
               "--export-path", str(out), "--force"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"torch-model-archiver failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    archive = out / f"{name}.mar"
    log.info("TorchServe archive of %s v%s: %s (%.1f MB)", name, mv.version, archive, archive.stat().st_size / 1e6)
    return archive


def _zip_code(path: Path) -> None:
    """modelyard's package (sources only) as a zip importable from sys.path."""
    import modelyard

    root = Path(modelyard.__file__).resolve().parent
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for file in sorted(root.rglob("*.py")):
            zf.write(file, Path("modelyard") / file.relative_to(root))


def _archiver() -> str:
    """torch-model-archiver beside this Python (the venv's), else on PATH."""
    beside = Path(sys.executable).parent / "torch-model-archiver"
    found = str(beside) if beside.exists() else shutil.which("torch-model-archiver")
    if not found:
        raise FileNotFoundError("torch-model-archiver is not installed (pip install torch-model-archiver)")
    return found
