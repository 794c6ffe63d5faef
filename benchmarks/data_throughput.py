"""Sample-building throughput of one dataloader worker, and where its time goes.

Two workloads, each built sample by sample in this process with one torch thread (what a
dataloader worker runs), with the builder's per-stage stopwatch on:

- ``demo``: the training mixture of ``conf/data/demo.yaml`` (its sample knobs: 8 frames, demo
  frames kept at 112-224 px) on a generated demo dataset;
- ``720p``: a generated 1280x720, 300-frame H.264 mp4 (a square moving over a gradient) with the
  square's RLE masks on 8 frames, built with the reference knobs (``DataConfig()`` defaults: 32
  frames, 128-768 tokens per frame), once per decoder backend that works here
  (``data.video.backend``), and once with PyAV behind the decode deadline
  (``data.video.timeout_s``: decoding in a helper process, frames sent back through a pipe);
  the passes over the 720p record alternate between these, so the ratios between rows hold
  on a loaded machine.

Prints samples/s and ms per sample, and the share of each stage (read record, decode video,
resize frames, render + tokenise, align tags, decode masks, processor) in the measured time;
``other`` is the rest (frame-size arithmetic, consistency checks, tensor assembly).

    .venv/bin/python benchmarks/data_throughput.py [--demo-dir DIR] [--demo-train 32] [--repeats 5]
        [--backends pyav decord torchcodec]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
from omegaconf import OmegaConf
from pycocotools import mask as mask_utils
from rich.console import Console
from rich.table import Table

from swim.data.dataset import SwimDataset
from swim.data.decoders import BACKENDS, unavailable
from swim.data.mixture import build_mixture
from swim.data.sample import STAGES, DataConfig, SampleBuilder
from swim.data.schema import Record, Turn
from swim.model.backbone import build_processor

REPO = Path(__file__).resolve().parents[1]


def demo_workload(demo_dir: Path | None, num_train: int, cache: Path) -> tuple[Sequence[Record], DataConfig]:
    """The demo training mixture (records read from its memory-mapped cache) and the demo's knobs."""
    from swim.data.demo import ensure_demo, generate_demo

    if demo_dir is None:
        demo_dir = cache / "demo"
        generate_demo(
            demo_dir, seed=0, num_train=num_train, num_val=2, num_bench=2, num_images=4, progress=False
        )
    else:
        ensure_demo(demo_dir)
    data = OmegaConf.load(REPO / "conf" / "data" / "demo.yaml")
    root = OmegaConf.create({"paths": {"cache_dir": str(cache)}, "seed": 0, "data": data})
    root.data.demo_dir = str(demo_dir)
    cfg: Any = OmegaConf.to_container(root.data, resolve=True)
    mixture = build_mixture(cfg["train"]["sources"], seed=0, cache_dir=cache, strict=True)
    return mixture, DataConfig.from_mapping(cfg)


def write_square_video(path: Path, num_frames: int, height: int, width: int, fps: int = 30) -> np.ndarray:
    """Encode a square moving right over a gradient, frame by frame; returns its ``(F, H, W)`` masks."""
    gradient = np.broadcast_to(
        np.linspace(0, 200, width, dtype=np.float32)[None, :, None], (height, width, 3)
    )
    base = gradient.astype(np.uint8)
    side = height // 4
    masks = np.zeros((num_frames, height, width), dtype=bool)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for t in range(num_frames):
            x = int((width - side) * t / max(num_frames - 1, 1))
            masks[t, height // 3 : height // 3 + side, x : x + side] = True
            frame = base.copy()
            frame[masks[t]] = (220, 40, 40)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return masks


def hd_workload(cache: Path) -> tuple[list[Record], DataConfig]:
    """One record on a 1280x720, 300-frame mp4 with masks on 8 frames; reference knobs."""
    path = cache / "square_720p.mp4"
    masks = write_square_video(path, 300, 720, 1280)
    annotated = np.linspace(0, 299, 8).round().astype(int).tolist()
    instance = {}
    for f in annotated:
        encoded = mask_utils.encode(np.asfortranarray(masks[f].astype(np.uint8)))
        instance[str(f)] = {
            "segmentation": {"size": [720, 1280], "counts": encoded["counts"].decode("ascii")}
        }
    turns = [
        Turn("user", "Describe the <ins>red square</ins> in detail.", 0),
        Turn("assistant", "The <ins>red square</ins> slides from the left edge to the right edge."),
    ]
    record = Record("hd", "hd.json", 0, "hd:0", "nl_refer", turns, video=str(path), annotation=[instance])
    return [record], DataConfig()


def measure(
    builders: dict[str, SampleBuilder], records: dict[str, Sequence[Record]], repeats: int
) -> dict[str, tuple[int, float, dict[str, float]]]:
    """Per workload: samples built, seconds and seconds per stage over ``repeats`` passes.

    Each workload is warmed up once; then the passes alternate between the workloads, so that a
    change in the machine's load falls on all of them alike.
    """
    datasets = {name: SwimDataset(records[name], builder, strict=True) for name, builder in builders.items()}
    seconds = dict.fromkeys(builders, 0.0)
    for name, dataset in datasets.items():
        dataset[0]
        builders[name].stopwatch.reset()
    for _ in range(repeats):
        for name, dataset in datasets.items():
            builders[name].stopwatch.enabled = True
            start = time.perf_counter()
            for i in range(len(dataset)):
                dataset[i]
            seconds[name] += time.perf_counter() - start
            builders[name].stopwatch.enabled = False
    return {
        name: (repeats * len(datasets[name]), seconds[name], dict(builders[name].stopwatch.seconds))
        for name in builders
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--demo-dir", type=Path, default=None, help="an existing demo (default: generate one)"
    )
    parser.add_argument("--demo-train", type=int, default=32, help="train videos of the generated demo")
    parser.add_argument("--repeats", type=int, default=5, help="passes over the 720p record")
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), help="decoders for the 720p rows")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    processor = build_processor()
    console = Console(width=160)
    table = Table(title="sample building, one worker (1 torch thread); stage columns: % of the time")
    for column in ("workload", "samples", "samples/s", "ms/sample", *STAGES, "other"):
        table.add_column(column, justify="right")
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        demo_records, demo_cfg = demo_workload(args.demo_dir, args.demo_train, cache)
        results = measure({"demo": SampleBuilder(processor, demo_cfg)}, {"demo": demo_records}, 1)
        hd_records, _ = hd_workload(cache)
        configs = {}
        for backend in args.backends:
            if unavailable(backend) is not None:
                console.print(f"skipping {backend}: {unavailable(backend)}")
                continue
            configs[f"720p, 32 of 300 frames, {backend}"] = DataConfig(video={"backend": backend})
        deadline = DataConfig(video={"backend": "pyav", "timeout_s": 60.0})
        configs["720p, 32 of 300 frames, pyav, timeout_s=60"] = deadline
        builders = {name: SampleBuilder(processor, cfg) for name, cfg in configs.items()}
        results.update(measure(builders, dict.fromkeys(configs, hd_records), args.repeats))
        for name, (count, seconds, stages) in results.items():
            shares = [100 * stages.get(stage, 0.0) / seconds for stage in STAGES]
            table.add_row(
                name,
                str(count),
                f"{count / seconds:.1f}",
                f"{1000 * seconds / count:.1f}",
                *(f"{share:.1f}" for share in shares),
                f"{100 - sum(shares):.1f}",
            )
    console.print(table)


if __name__ == "__main__":
    main()
