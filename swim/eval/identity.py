"""Which model an evaluation dir belongs to, so that a resumed run never mixes two models' rows.

A run dir's ``model.json`` records the model's identity: the checkpoint's absolute path and a
SHA-256 of its content (a file, or every file of a folder), or, without ``ckpt``, the backbone
config (plus the seed of a random-init tiny model, and the content hash of a pretrained folder).
Rerunning in the same dir resumes only when the identity is the same; another model is refused
before anything is loaded or written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from swim.model.backbone import BackboneConfig

log = logging.getLogger(__name__)

IDENTITY_FILE = "model.json"
RESULT_FOLDERS = ("bench_q", "bench_d", "grounding")
_CHUNK = 1 << 24


def content_hash(path: str | Path) -> str:
    """SHA-256 of a file's bytes, or of a folder's files (relative paths, sizes and contents, sorted)."""
    path = Path(path)
    if path.is_file():
        return _file_hash(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        entry = f"{file.relative_to(path).as_posix()}\0{file.stat().st_size}\0{_file_hash(file)}\n"
        digest.update(entry.encode("utf-8"))
    return digest.hexdigest()


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def model_identity(ckpt: str | None, backbone: BackboneConfig, seed: int) -> dict[str, Any]:
    """What determines the evaluated weights: ``ckpt`` (path and content hash) or the backbone config.

    Hashing reads the whole checkpoint once (about a minute for a 7B model on a slow disk).
    """
    if ckpt is not None:
        path = Path(ckpt).absolute()
        log.info("hashing %s to key the evaluation dir", path)
        return {"ckpt": str(path), "sha256": content_hash(path) if path.exists() else None}
    identity: dict[str, Any] = {"ckpt": None, "backbone": dataclasses.asdict(backbone)}
    if backbone.kind == "tiny":
        identity["seed"] = seed
    if backbone.path:
        identity["sha256"] = content_hash(backbone.path) if Path(backbone.path).exists() else None
    return identity


def describe(identity: dict[str, Any]) -> str:
    """One line naming the model of ``identity``."""
    if identity.get("ckpt"):
        return f"ckpt {identity['ckpt']} (sha256 {str(identity.get('sha256'))[:12]})"
    backbone = identity.get("backbone", {})
    where = f" {backbone.get('path')}" if backbone.get("path") else ""
    seed = f" seed {identity['seed']}" if "seed" in identity else ""
    return f"ckpt=null: backbone {backbone.get('kind')}{where}{seed}"


def claim_run_dir(run_dir: str | Path, identity: dict[str, Any]) -> None:
    """Record ``identity`` as ``run_dir``'s model, or refuse a dir that holds another model's results.

    Raises:
        ValueError: ``run_dir`` was evaluated with another model, or holds results written before
            dirs were keyed by model (which model wrote them cannot be told).
    """
    run_dir = Path(run_dir)
    identity = json.loads(json.dumps(identity))  # as it reads back from the file (tuples are lists)
    path = run_dir / IDENTITY_FILE
    hint = "evaluate this model in a new dir (leave hydra.run.dir unset) or resume the dir of this model"
    if path.exists():
        previous = json.loads(path.read_text(encoding="utf-8"))
        if previous != identity:
            raise ValueError(
                f"{run_dir} holds the results of {describe(previous)}, but this run evaluates "
                f"{describe(identity)}: {hint}"
            )
        return
    stale = [name for name in RESULT_FOLDERS if (run_dir / name).exists()]
    if stale:
        raise ValueError(
            f"{run_dir} holds results ({', '.join(stale)}/) without {IDENTITY_FILE}, so the model that "
            f"wrote them is unknown: {hint}"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(identity, indent=2, sort_keys=True) + "\n", encoding="utf-8")
