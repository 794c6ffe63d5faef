"""Padded fixed-size batches vs token-budget batches at the same tokens per step: padding, tokens/s, memory.

The mixture is the demo's training mixture (``conf/data/demo.yaml``: NL-Refer-D captions, NL-Refer-Q
QA and LLaVA-Video QA on videos, LLaVA image QA; every record, ``--images`` image scenes) on a
generated demo, with video frames upscaled to at least ``--video-tokens`` tokens over
``--frames`` frames, so the lengths spread as NL-Refer's do: videos of 10-40x the tokens of an
image QA (swim has no text-only records; image QA is the short end); ``data.max_length`` is the
budget, so no sample is rejected as too long. Modes, each one epoch of the
same samples in a fresh subprocess:

- ``budget``: ``data.max_tokens_per_batch=--max-tokens`` (``swim.data.budget``, length buckets);
- ``fixed``: ``data.batch_size=B`` shuffled batches (today's default), ``B`` the budget mode's mean
  real tokens per batch over the mean sample length, so both train on the same real tokens per
  step on average;
- ``packed``: ``data.packing=true`` with the same ``data.max_tokens_per_batch`` (``swim.data.packing``:
  first-fit rows of at most that many tokens, no padding), the same bound on tokens per step as
  ``budget``, all of them real.

All batches of the epoch are built first (data loading is not timed); then the tiny SWIM module
(``conf/model/tiny.yaml``, probe on layers 1-3, CE + mask BCE, AdamW) runs forward, backward and an
optimiser step on each after one warm-up batch. Reported per mode: optimiser steps, real and
padded tokens per step, the fraction of padding tokens, training tokens/s (real tokens over the
summed step time) and peak memory (CPU: the process's max RSS; CUDA:
``torch.cuda.max_memory_allocated``) with ``extra``, its part above the memory in use before the
first timed step (activations, gradients, optimiser states); then budget/fixed and packed/fixed
ratios.

    nice -n 19 .venv/bin/python benchmarks/batching.py [--max-tokens 8192] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

from swim.data.datamodule import SwimDataModule
from swim.data.demo import generate_demo
from swim.data.lengths import record_lengths
from swim.model.module import SwimModule
from swim.model.packing import mrope_of

REPO = Path(__file__).resolve().parents[1]
MODES = ("fixed", "budget", "packed")
TOKEN_PX = 28 * 28


def data_config(demo: Path, cache: Path, args: argparse.Namespace, **loader: Any) -> dict[str, Any]:
    """``conf/data/demo.yaml`` on ``demo`` with every record and the widened video lengths."""
    root = OmegaConf.create({"paths": {"cache_dir": str(cache)}, "seed": 0})
    root.data = OmegaConf.load(REPO / "conf" / "data" / "demo.yaml")
    root.data.demo_dir = str(demo)
    root.data.train.sources.llava_video.sampling = "all"
    overrides = {
        "max_frames": args.frames,
        "min_pixels": args.video_tokens * TOKEN_PX,
        "max_pixels": 4 * args.video_tokens * TOKEN_PX,
        "max_length": args.max_tokens,
        "num_workers": 0,
        **loader,
    }
    for key, value in overrides.items():
        root.data[key] = value
    resolved = OmegaConf.to_container(root, resolve=True)
    assert isinstance(resolved, dict)
    return resolved["data"]


def peak_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def current_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 1e9
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 1e9


def worker(cfg: dict[str, Any], device_name: str) -> dict[str, float]:
    """One epoch of one mode's batches in this process."""
    module = SwimModule(
        backbone={"kind": "tiny"}, loss={"layers": [1, 2, 3]}, optimizer={"lr": 1e-4}, scheduler={}
    )
    module.configure_model()
    rope = mrope_of(module.backbone_cfg) if cfg.get("packing") else None
    dm = SwimDataModule(cfg, module.processor, rope=rope)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    device = torch.device(device_name)
    module.to(device)
    module.train()
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)

    def step(batch: Any) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        module.forward_losses(batch, capture=True).loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    batches = [b.to(device) for b in batches]
    step(batches[0])
    before = current_gb(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = sum(step(b) for b in batches)
    real = sum(int(b.attention_mask.sum()) for b in batches)
    padded = sum(b.input_ids.numel() for b in batches)
    peak = peak_gb(device)
    return {
        "steps": len(batches),
        "real": real,
        "padded": padded,
        "seconds": seconds,
        "peak_gb": peak,
        "extra_gb": peak - before,
        "largest": max(b.input_ids.numel() for b in batches),
    }


def run_mode(cfg: dict[str, Any], device: str) -> dict[str, float]:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(cfg), "--device", device]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the worker failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-tokens", type=int, default=8192, help="data.max_tokens_per_batch")
    parser.add_argument("--bucket-ratio", type=float, default=1.25, help="data.bucket_ratio")
    parser.add_argument("--frames", type=int, default=16, help="data.max_frames of the videos")
    parser.add_argument("--video-tokens", type=int, default=256, help="least tokens per video frame")
    parser.add_argument("--scenes", type=int, default=32, help="demo train scenes (videos)")
    parser.add_argument("--images", type=int, default=48, help="demo image scenes")
    parser.add_argument("--demo-dir", type=Path, help="an existing demo (default: generate one)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker), args.device)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        demo = args.demo_dir or Path(tmp) / "demo"
        if args.demo_dir is None:
            generate_demo(demo, num_train=args.scenes, num_val=1, num_bench=1, num_images=args.images)
        cache = Path(tmp) / "cache"
        budget_cfg = data_config(
            demo, cache, args, max_tokens_per_batch=args.max_tokens, bucket_ratio=args.bucket_ratio
        )
        budget = run_mode(budget_cfg, args.device)
        lengths = mixture_lengths(budget_cfg)
        batch_size = max(1, round(budget["real"] / budget["steps"] / float(lengths.mean())))
        fixed = run_mode(data_config(demo, cache, args, batch_size=batch_size), args.device)
        packed_cfg = data_config(demo, cache, args, max_tokens_per_batch=args.max_tokens, packing=True)
        packed = run_mode(packed_cfg, args.device)
    report({"fixed": fixed, "budget": budget, "packed": packed}, lengths, batch_size, args)


def mixture_lengths(cfg: dict[str, Any]) -> np.ndarray:
    """``(N,)`` token lengths of the training mixture's samples."""
    from swim.model.backbone import build_processor

    dm = SwimDataModule(cfg, build_processor())
    dm.setup("fit")
    return record_lengths(dm.mixtures["train"], dm.builder)


def report(results: dict[str, dict[str, float]], lengths: np.ndarray, batch_size: int, args: Any) -> None:
    console = Console(width=150)
    median = int(np.median(lengths))
    console.print(
        f"{len(lengths)} samples of {lengths.min()}-{lengths.max()} tokens (median {median}, "
        f"mean {lengths.mean():.0f}); fixed: batch_size={batch_size}; budget: "
        f"max_tokens_per_batch={args.max_tokens}, bucket_ratio={args.bucket_ratio}; {args.device}"
    )
    table = Table(title="fixed vs token-budget vs packed batches, one epoch, tiny SWIM model")
    columns = ("mode", "steps", "real tok/step", "padded tok/step", "largest batch", "padding")
    for column in (*columns, "tokens/s", "peak GB", "extra GB"):
        table.add_column(column, justify="right")
    for mode in MODES:
        r = results[mode]
        table.add_row(
            mode,
            f"{r['steps']}",
            f"{r['real'] / r['steps']:.0f}",
            f"{r['padded'] / r['steps']:.0f}",
            f"{r['largest']}",
            f"{1 - r['real'] / r['padded']:.1%}",
            f"{r['real'] / r['seconds']:.0f}",
            f"{r['peak_gb']:.2f}",
            f"{r['extra_gb']:.2f}",
        )
    console.print(table)
    f = results["fixed"]
    fixed_padding = 1 - f["real"] / f["padded"]
    for mode in ("budget", "packed"):
        b = results[mode]
        padding = (
            f"{(1 - b['real'] / b['padded']) / fixed_padding:.2f}" if fixed_padding else "n/a (no padding)"
        )
        console.print(
            f"{mode}/fixed: padding fraction {padding}, "
            f"tokens/s {(b['real'] / b['seconds']) / (f['real'] / f['seconds']):.2f}, "
            f"peak memory {b['peak_gb'] / f['peak_gb']:.2f}, extra memory {b['extra_gb'] / f['extra_gb']:.2f}"
        )


if __name__ == "__main__":
    main()
