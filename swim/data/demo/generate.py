"""Write the whole demo dataset and its manifest; regenerate only when parameters change."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import Progress

from swim.data.demo import records
from swim.data.demo.bench import bench_questions
from swim.data.demo.encode import write_frame_folder, write_mp4, write_png
from swim.data.demo.sample import BASE_TOKEN_PX, RenderedScene, sample_scene

log = logging.getLogger(__name__)

DEMO_VERSION = 2
MANIFEST = "manifest.json"
MARKER = ".swim-demo"
LOCK = ".swim-demo.lock"
SUBDIRS = ("videos", "frames", "images", "annotations")
SPLITS = {"train": 0, "val": 1, "bench": 2, "image": 3}
D_TRAIN = "annotations/nl_refer_d.json"
D_VAL = "annotations/val_nl_refer_d.json"
Q_TRAIN = "annotations/nl_refer_q.jsonl"
LLAVA = "annotations/llava_video.json"
BENCH_Q = "annotations/bench_q.json"
BENCH_Q_NL = "annotations/bench_q_nlrefer.json"
BENCH_D = "annotations/bench_d.json"
BENCH_D_NL = "annotations/bench_d_nlrefer.json"
FILE_FORMATS = {
    D_TRAIN: "nl_refer",
    D_VAL: "nl_refer",
    Q_TRAIN: "nl_refer",
    LLAVA: "llava_video",
    BENCH_Q: "bench_q",
    BENCH_Q_NL: "bench_q",
    BENCH_D: "bench_d",
    BENCH_D_NL: "bench_d",
}
#: Segmentation form of the train/val detailed-caption records, cycled by scene index.
D_FORMS = ("rle", "rle_list", "rle", "polygon", "rle", "rle")


@dataclass(frozen=True)
class DemoParams:
    """Sizes of a demo dataset (the manifest records them; other values trigger regeneration)."""

    num_train: int = 400
    num_val: int = 64
    num_bench: int = 40
    num_images: int = 8


@dataclass
class _Output:
    root: Path
    records: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {f: [] for f in FILE_FORMATS})
    meta: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {f: [] for f in FILE_FORMATS})
    scenes: dict[str, dict[str, Any]] = field(default_factory=dict)
    media: dict[str, str] = field(default_factory=dict)

    def add(self, file: str, record: dict[str, Any], meta: dict[str, Any]) -> None:
        self.records[file].append(record)
        self.meta[file].append(meta)

    def scene(self, rendered: RenderedScene, kind: str) -> str:
        """Write the scene's media (``mp4``, ``frames`` or ``png``); return its path relative to root."""
        spec = rendered.spec
        if kind == "mp4":
            rel = f"videos/{spec.name}.mp4"
            write_mp4(self.root / rel, rendered.frames, spec.fps)
        elif kind == "frames":
            rel = f"frames/{spec.name}"
            write_frame_folder(self.root / rel, rendered.frames)
        else:
            rel = f"images/{spec.name}.png"
            write_png(self.root / rel, rendered.frames[0])
        self.scenes[spec.name] = spec.to_dict()
        self.media[spec.name] = rel
        return rel


def scene_seed(seed: int, split: str, index: int) -> int:
    """The seed of scene ``index`` of ``split`` in a dataset generated with ``seed``."""
    return int(np.random.SeedSequence([seed, SPLITS[split], index]).generate_state(1)[0])


def _record_rng(rendered: RenderedScene) -> np.random.Generator:
    return np.random.default_rng([rendered.spec.seed, 1])


def _train_scene(out: _Output, seed: int, split: str, i: int, token_px: int) -> None:
    """Scene ``i`` of ``train``/``val``: a detailed-caption record, and for train scenes either a
    two-object QA record (odd ``i``) or a general QA record (even ``i``).

    Record variants are cycled by ``i`` so that even a small demo holds each of them: segmentation
    form (:data:`D_FORMS`), tag placement, frame 0 annotated or not (even/odd ``i``), one or two
    QA turns, tagged or plain QA answers.
    """
    form = D_FORMS[i % len(D_FORMS)]
    shape = ("square", "triangle")[(i // len(D_FORMS)) % 2] if form == "polygon" else None
    rendered = sample_scene(
        f"{split}_{i:05d}", scene_seed(seed, split, i), target_shape=shape, token_px=token_px
    )
    rng = _record_rng(rendered)
    video = out.scene(rendered, "mp4")
    file = D_TRAIN if split == "train" else D_VAL
    placement = records.TAG_PLACEMENTS[i % len(records.TAG_PLACEMENTS)]
    out.add(file, *records.detailed_caption(rendered, video, i, rng, placement, form, first=i % 2 == 0))
    if split != "train":
        return
    if i % 2 == 0:
        out.add(LLAVA, *records.general_qa(rendered, video, False, rng, turns=1 + (i // 2) % 2))
        return
    turns = 2 if (i // 2) % 3 == 0 else 1
    built = records.pair_qa(rendered, video, i, rng, turns, tag_answers=(i // 2) % 2 == 0)
    if built is None:
        log.info("scene %s: no clear two-object question; no NL-Refer-Q record", rendered.spec.name)
    else:
        out.add(Q_TRAIN, *built)


def _bench_scene(out: _Output, seed: int, i: int, token_px: int) -> None:
    rendered = sample_scene(f"bench_{i:05d}", scene_seed(seed, "bench", i), token_px=token_px)
    rng = _record_rng(rendered)
    video = out.scene(rendered, "mp4" if i % 2 == 0 else "frames")
    for question in bench_questions(rendered.facts, rendered.spec, rng):
        original, nl_refer, meta = records.bench_q(rendered, video, len(out.records[BENCH_Q]), question, rng)
        out.add(BENCH_Q, original, meta)
        out.add(BENCH_Q_NL, nl_refer, meta)
    original, nl_refer, meta = records.bench_d(rendered, video, i, rng)
    out.add(BENCH_D, original, meta)
    out.add(BENCH_D_NL, nl_refer, meta)


def _image_scene(out: _Output, seed: int, i: int, token_px: int) -> None:
    rendered = sample_scene(f"still_{i:05d}", scene_seed(seed, "image", i), still=True, token_px=token_px)
    image = out.scene(rendered, "png")
    out.add(LLAVA, *records.general_qa(rendered, image, True, _record_rng(rendered), 1 + i % 2))


def _prepare(root: Path) -> None:
    """Make ``root`` ready for a fresh dataset; refuse a non-empty folder that is not a demo."""
    root.mkdir(parents=True, exist_ok=True)
    ours = (root / MARKER).exists() or (root / MANIFEST).exists()
    foreign = [p.name for p in root.iterdir() if p.name not in (MARKER, LOCK)]
    if not ours and foreign:
        raise FileExistsError(
            f"{root}: not empty ({', '.join(sorted(foreign)[:5])}) and holds no demo dataset "
            f"(no {MANIFEST} or {MARKER}); expected an empty or demo folder"
        )
    (root / MARKER).write_text("swim demo dataset; generated by swim.data.demo\n")
    (root / MANIFEST).unlink(missing_ok=True)
    for sub in SUBDIRS:
        shutil.rmtree(root / sub, ignore_errors=True)


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def _write_annotations(out: _Output) -> None:
    for file, items in out.records.items():
        path = out.root / file
        path.parent.mkdir(parents=True, exist_ok=True)
        if file.endswith(".jsonl"):
            path.write_text("".join(json.dumps(r) + "\n" for r in items))
        else:
            path.write_text(json.dumps(items))


def generate_demo(
    out_dir: str | Path, seed: int = 0, *, progress: bool = True, token_px: int = BASE_TOKEN_PX, **sizes: int
) -> Path:
    """Generate the demo dataset into ``out_dir`` (its video root), replacing an older one.

    Deterministic per ``seed``, ``token_px`` and sizes: same records, masks and pixels.

    Args:
        token_px: the model family's token side in px (28 Qwen2/2.5-VL, 32 Qwen3-VL): frames and
            shapes are drawn at multiples of it (:func:`~swim.data.demo.sample.frame_sizes`).
        sizes: :class:`DemoParams` fields (``num_train``, ``num_val``, ``num_bench``,
            ``num_images``); those not given keep its defaults.

    Returns:
        The manifest's path, ``out_dir/manifest.json``.

    Raises:
        FileExistsError: ``out_dir`` is not empty and holds no demo dataset.
        TypeError: a size that is not a :class:`DemoParams` field.
    """
    root = Path(out_dir)
    params = DemoParams(**sizes)
    _prepare(root)
    start = time.perf_counter()
    out = _Output(root)
    scenes = {
        "train": params.num_train,
        "val": params.num_val,
        "bench": params.num_bench,
        "image": params.num_images,
    }
    jobs = [(split, i) for split, n in scenes.items() for i in range(n)]
    with Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task(f"demo dataset -> {root}", total=len(jobs))
        for split, i in jobs:
            if split == "bench":
                _bench_scene(out, seed, i, token_px)
            elif split == "image":
                _image_scene(out, seed, i, token_px)
            else:
                _train_scene(out, seed, split, i, token_px)
            bar.advance(task)
    _write_annotations(out)
    counts = {file: len(items) for file, items in out.records.items()}
    counts["videos"] = sum(m.endswith(".mp4") for m in out.media.values())
    counts["frame_folders"] = sum(m.startswith("frames/") for m in out.media.values())
    counts["images"] = sum(m.endswith(".png") for m in out.media.values())
    manifest = {
        "version": DEMO_VERSION,
        "seed": seed,
        "token_px": token_px,
        "params": asdict(params),
        "counts": counts,
        "files": {
            file: {"format": FILE_FORMATS[file], "count": counts[file], "records": out.meta[file]}
            for file in FILE_FORMATS
        },
        "media": out.media,
        "scenes": out.scenes,
    }
    _write_json(root / MANIFEST, manifest)
    log.info("demo dataset: %s in %.1f s (%s)", root, time.perf_counter() - start, counts)
    return root / MANIFEST


def _is_current(path: Path, seed: int, params: DemoParams, token_px: int) -> bool:
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return (
        manifest.get("version") == DEMO_VERSION
        and manifest.get("seed") == seed
        and manifest.get("params") == asdict(params)
        and manifest.get("token_px", BASE_TOKEN_PX) == token_px
        and all((path.parent / file).is_file() for file in manifest.get("files", {}))
    )


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``root`` (several processes may call :func:`ensure_demo`)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / LOCK, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_demo(
    out_dir: str | Path, seed: int = 0, *, progress: bool = True, token_px: int = BASE_TOKEN_PX, **sizes: int
) -> Path:
    """Return ``out_dir``'s manifest, generating the dataset first if it is missing, or was made
    by another version, seed, token side or sizes (:class:`DemoParams` fields, as for
    :func:`generate_demo`). Safe to call from several processes at once."""
    root = Path(out_dir)
    params = DemoParams(**sizes)
    with _locked(root):
        if _is_current(root / MANIFEST, seed, params, token_px):
            return root / MANIFEST
        log.info("demo dataset in %s missing or stale: generating it", root)
        return generate_demo(root, seed, progress=progress, token_px=token_px, **sizes)


def demo_folder(demo_dir: str | Path, token_px: int = BASE_TOKEN_PX) -> str:
    """Where the demo drawn for ``token_px`` lives: ``demo_dir`` itself at 28 px, else a sibling
    ``<demo_dir>_<token_px>px`` (so families of different geometry never regenerate each other's)."""
    return str(demo_dir) if token_px == BASE_TOKEN_PX else f"{demo_dir}_{token_px}px"
