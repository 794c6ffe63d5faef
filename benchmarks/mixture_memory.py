"""Memory of a dataloader worker that holds a :class:`~swim.data.mixture.Mixture` vs one that ``json.load``s.

Generates an NL-Refer-D-like annotation file of ``--mb`` megabytes (real COCO RLE strings of
720x1280 masks, 16 annotated frames per record), builds its records cache once, then measures in
fresh spawned processes (so nothing is inherited from this one):

- ``mixture``: unpickle the mixture (what a worker receives) and read ``--reads`` random records;
- ``json.load``: decode the same file with ``json.load`` (what a naive dataset holds per worker).

For each, from ``/proc/self/smaps_rollup``: resident set size (RSS) and its anonymous part (heap:
memory only this process can use; the memory-mapped Arrow pages it touched are file-backed page
cache, shared by all workers and reclaimable). Also the time of the first build (JSON -> validated
Arrow) and of a second start (cache hit).

Run: ``.venv/bin/python benchmarks/mixture_memory.py --mb 300``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import pickle
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from rich.console import Console
from rich.table import Table

from swim.data.mixture import build_mixture


def memory_mb() -> tuple[float, float]:
    """This process's (RSS, anonymous RSS) in MiB from ``/proc/self/smaps_rollup``."""
    fields: dict[str, int] = {}
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]:
        name, value, *_ = line.split()
        fields[name.rstrip(":")] = int(value)
    return fields["Rss"] / 1024, fields["Anonymous"] / 1024


def rle_pool(count: int, seed: int) -> list[dict[str, Any]]:
    """``count`` compressed RLEs of random ellipses on 720x1280 frames."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:720, :1280]
    pool = []
    for _ in range(count):
        cy, cx, ry, rx = (
            rng.uniform(100, 620),
            rng.uniform(100, 1180),
            rng.uniform(30, 200),
            rng.uniform(30, 300),
        )
        mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1 + 0.2 * np.sin(xx / 7.0)
        encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        pool.append({"size": [720, 1280], "counts": encoded["counts"].decode("ascii")})
    return pool


def write_annotations(folder: Path, megabytes: int, seed: int = 0) -> Path:
    """An NL-Refer-D-like JSON array of about ``megabytes`` MB, all records about ``clip.mp4``."""
    rng = random.Random(seed)
    pool = rle_pool(64, seed)
    (folder / "clip.mp4").write_bytes(b"\x00")
    path = folder / "nl_refer_d.json"
    written, index = 0, 0
    with path.open("w") as handle:
        handle.write("[")
        while written < megabytes * 1_000_000:
            frames = sorted(rng.sample(range(300), 16))
            record = {
                "video": "clip.mp4",
                "index": f"videorefer_detailed_caption/{index:07d}",
                "conversations": [
                    {"from": "human", "value": "<video>\nDescribe the <ins>dog</ins> wearing a red collar."},
                    {
                        "from": "gpt",
                        "value": "The <ins>dog</ins> trots along the beach. " * rng.randint(3, 12),
                    },
                ],
                "annotation": [{str(f): {"segmentation": rng.choice(pool)} for f in frames}],
            }
            text = ("," if index else "") + json.dumps(record)
            handle.write(text)
            written += len(text)
            index += 1
        handle.write("]")
    return path


def _mixture_worker(blob: bytes, reads: int, out: Any) -> None:
    import pyarrow.ipc  # noqa: F401  (imports are not what is measured)

    before = memory_mb()
    mixture = pickle.loads(blob)
    rng = random.Random(0)
    masks = sum(len(mixture[rng.randrange(len(mixture))].annotation[0]) for _ in range(reads))
    out.put({"before": before, "after": memory_mb(), "masks": masks})


def _json_worker(path: str, out: Any) -> None:
    before = memory_mb()
    with open(path) as handle:
        data = json.load(handle)
    out.put({"before": before, "after": memory_mb(), "records": len(data)})


def _in_fresh_process(target: Any, *args: Any) -> dict[str, Any]:
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target, args=(*args, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=300, help="size of the generated annotation file")
    parser.add_argument("--reads", type=int, default=2000, help="random records the mixture worker reads")
    args = parser.parse_args()
    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        path = write_annotations(folder, args.mb)
        console.print(f"generated {path.stat().st_size / 1e6:.0f} MB in {time.perf_counter() - start:.0f}s")
        source = [{"name": "nl_refer_d", "path": str(path)}]
        start = time.perf_counter()
        mixture = build_mixture(source, seed=0, cache_dir=folder / "cache", strict=False)
        first_build = time.perf_counter() - start
        start = time.perf_counter()
        mixture = build_mixture(source, seed=0, cache_dir=folder / "cache", strict=False)
        second_start = time.perf_counter() - start
        blob = pickle.dumps(mixture)
        worker = _in_fresh_process(_mixture_worker, blob, args.reads)
        naive = _in_fresh_process(_json_worker, str(path))

    table = Table(title=f"{len(mixture)} records, {args.mb} MB of JSON")
    for column in ("worker", "RSS MiB (+ over imports)", "anonymous MiB (+ over imports)"):
        table.add_column(column)
    for name, result in ((f"mixture, {args.reads} reads", worker), ("json.load", naive)):
        (rss0, anon0), (rss, anon) = result["before"], result["after"]
        table.add_row(name, f"{rss:.0f} (+{rss - rss0:.0f})", f"{anon:.0f} (+{anon - anon0:.0f})")
    console.print(table)
    for label, k in (("RSS", 0), ("anonymous", 1)):
        growth = [r["after"][k] - r["before"][k] for r in (naive, worker)]
        whole = naive["after"][k] / worker["after"][k]
        console.print(
            f"{label}: json.load adds {growth[0]:.0f} MiB, the mixture {growth[1]:.0f} MiB "
            f"({growth[0] / max(growth[1], 1):.0f}x); whole process {whole:.1f}x"
        )
    console.print(
        f"pickled mixture: {len(blob)} bytes; first build {first_build:.1f}s; "
        f"second start (cache hit) {second_start:.2f}s ({first_build / second_start:.0f}x faster)"
    )


if __name__ == "__main__":
    main()
