"""LoRA against full fine-tuning: SWIM training-step time, peak memory and trainable parameters.

Each mode runs in a fresh subprocess on a random-init Qwen2.5-VL (the tiny demo model, or
``--wide``: hidden 512, 8 heads, intermediate 1376) with the vision tower frozen, one long video
sample of ``--length`` tokens (``attention_overhead.build_inputs``), the attention probe on layers
1-3 and the SWIM loss (CE + mask BCE), AdamW over the trainable parameters. Reported: the median
step time (forward, backward, optimiser step) after one warm-up step, the process's peak resident
memory (``getrusage`` max RSS), ``extra`` (the peak minus the resident memory before the first
step: activations, gradients, AdamW states) and the trainable parameters; then LoRA/full ratios.

- ``full``: every language-model parameter (embeddings and LM head included) trains.
- ``lora``: :class:`swim.model.lora.PeftSettings` defaults (rank 16, alpha 32, q/k/v/o), or the
  ``--targets`` given.

    .venv/bin/python benchmarks/lora_vs_full.py --wide --length 4096 --steps 3
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from attention_overhead import _current_rss_gb, build_inputs, labelled_ce
from rich.console import Console
from rich.table import Table

from swim.losses import LossConfig, attention_mask_loss, composite_loss
from swim.model.backbone import BackboneConfig, TinyConfig, build_backbone
from swim.model.lora import PeftSettings, add_adapters
from swim.model.optim import apply_freeze, parameter_counts
from swim.model.probe import AttentionProbe, probe_request

MODES = ("full", "lora")
WIDE = TinyConfig(
    hidden_size=512, intermediate_size=1376, num_heads=8, num_kv_heads=4, mrope_section=[8, 12, 12]
)


def worker(mode: str, length: int, steps: int, wide: bool, targets: list[str]) -> dict[str, float]:
    """One mode in this process: median step seconds, memory in GB, trainable parameters."""
    model, _ = build_backbone(BackboneConfig(tiny=WIDE if wide else TinyConfig()))
    apply_freeze(model, "tower_and_merger")
    if mode == "lora":
        add_adapters(model, PeftSettings(target_modules=targets))
    model.train()
    counts = parameter_counts(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    inputs, supervision = build_inputs(length, rows=8, device=torch.device("cpu"))
    loss_cfg = LossConfig(layers=[1, 2, 3], resize="mask_to_pred")
    probe = AttentionProbe(model, loss_cfg.layers)
    request = probe_request(supervision)

    def step() -> float:
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with probe.capture(request) as maps:
            text, _ = labelled_ce(model, inputs)
        loss = composite_loss(text, attention_mask_loss(maps, supervision, loss_cfg).loss, loss_cfg)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    rss_before = _current_rss_gb()
    times = [step() for _ in range(steps + 1)][1:]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    return {
        "tokens": int(inputs["input_ids"].shape[1]),
        "step_s": statistics.median(times),
        "peak_gb": peak,
        "extra_gb": peak - rss_before,
        "trainable": counts["trainable"],
        "total": counts["total"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--length", type=int, default=4096, help="tokens of the video sample")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per mode (after one warm-up)")
    parser.add_argument("--wide", action="store_true", help="hidden 512 instead of the tiny model's 128")
    parser.add_argument("--targets", nargs="+", default=PeftSettings().target_modules, help="LoRA targets")
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.length, args.steps, args.wide, args.targets)))
        return
    results = {}
    for mode in MODES:
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            mode,
            "--length",
            str(args.length),
        ]
        command += ["--steps", str(args.steps), "--targets", *args.targets] + (
            ["--wide"] if args.wide else []
        )
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    table = Table(title=f"LoRA vs full fine-tuning, {results['full']['tokens']} tokens, SWIM loss, CPU")
    for column in ("mode", "step s", "peak GB", "extra GB", "trainable", "total"):
        table.add_column(column, justify="right")
    for mode, result in results.items():
        table.add_row(
            mode,
            f"{result['step_s']:.2f}",
            f"{result['peak_gb']:.2f}",
            f"{result['extra_gb']:.2f}",
            f"{result['trainable']:,}",
            f"{result['total']:,}",
        )
    console = Console()
    console.print(table)
    lora, full = results["lora"], results["full"]
    console.print(
        f"lora/full: step time {lora['step_s'] / full['step_s']:.2f}, peak memory "
        f"{lora['peak_gb'] / full['peak_gb']:.2f}, extra memory {lora['extra_gb'] / full['extra_gb']:.2f}, "
        f"trainable parameters {lora['trainable'] / full['trainable']:.4f}"
    )


if __name__ == "__main__":
    main()
