"""Training-step time and peak memory of attention supervision on long video sequences.

Runs each (configuration, sequence length) in a fresh subprocess on the tiny Qwen2.5-VL (frozen
vision tower, AdamW on the rest) and reports the median step time (forward, backward, optimizer
step) and the process's peak resident memory (``getrusage`` max RSS; ``extra`` is the peak minus
the resident memory just before the first step). Configurations:

- ``ce``: next-token CE with LM logits only at labelled positions (``model.model`` then
  ``lm_head`` on those positions), SDPA. The baseline (a) of the attention ratios.
- ``swim``: ``ce`` plus the SWIM mask loss from :class:`swim.model.probe.AttentionProbe` (b).
- ``eager``: ``ce`` plus the same mask loss read from eager attention with
  ``output_attentions=True`` (c): every layer materialises its ``heads x L x L`` weights.
- ``ce_stock``: stock transformers' CE forward (``model(..., labels=...)``, logits everywhere), the
  reference of (d) = ``ce`` / ``ce_stock``.

The mask loss compares at the frame's pixel resolution by default (``--resize pred_to_mask``, the
reference), which adds ``rows x cells x H x W`` floats of its own; ``--resize mask_to_pred``
compares on the token grid, leaving the probe's own cost.

A configuration whose estimated memory exceeds ``--budget-gb`` is skipped and says so.

    .venv/bin/python benchmarks/attention_overhead.py --lengths 4096 8192 16384
    .venv/bin/python benchmarks/attention_overhead.py --configs ce swim --steps 6 --interleave

``--interleave`` adds the b/a time ratio of ``ce`` and ``swim`` steps alternated on one model in
this process, which a 2-core machine's noise affects much less than separate runs.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from swim.data.batch import Supervision, contiguous_keys
from swim.losses import LossConfig, attention_mask_loss, composite_loss
from swim.model.backbone import BackboneConfig, build_backbone
from swim.model.probe import AttentionProbe, probe_request
from swim.model.tokenizer import QWEN_SPECIAL_IDS, load_qwen_tokenizer

CONFIGS = ("ce", "swim", "eager", "ce_stock")
VOCAB = 151936
HEADS = 4
LAYERS = 4
GRID_SIDE = 32  # token grid h = w: 896 x 896 px frames
ANSWER_TOKENS = 48


def estimate_gb(config: str, length: int) -> float:
    """Rough peak memory (GB) of the step's dominant tensors, to skip what cannot fit."""
    base = 1.5 + length * 128 * 4 * 60 / 1e9
    if config == "ce_stock":
        return base + 4 * length * VOCAB * 4 / 1e9
    if config == "eager":
        return base + LAYERS * 3 * HEADS * length * length * 4 / 1e9 + length * length * 4 / 1e9
    return base


def build_inputs(length: int, rows: int, device: torch.device) -> tuple[dict[str, torch.Tensor], Supervision]:
    """A one-sample batch of about ``length`` tokens: ``length // 1024`` temporal cells of 32 x 32 tokens."""
    tokenizer = load_qwen_tokenizer()
    cells = max(1, length // (GRID_SIDE * GRID_SIDE))
    num_visual = cells * GRID_SIDE * GRID_SIDE
    prefix = tokenizer(
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    ).input_ids
    prompt = tokenizer(
        "<|vision_end|>Describe the red circle in detail.<|im_end|>\n<|im_start|>assistant\n"
    ).input_ids
    answer = (tokenizer(" The red circle moves slowly to the left.").input_ids * ANSWER_TOKENS)[
        :ANSWER_TOKENS
    ]
    vision = [QWEN_SPECIAL_IDS["<|vision_start|>"]] + [QWEN_SPECIAL_IDS["<|video_pad|>"]] * num_visual
    ids = torch.tensor([[*prefix, *vision, *prompt, *answer, QWEN_SPECIAL_IDS["<|im_end|>"]]])
    labels = torch.full_like(ids, -100)
    labels[0, -ANSWER_TOKENS - 1 :] = ids[0, -ANSWER_TOKENS - 1 :]
    visual_start = len(prefix) + 1
    generator = torch.Generator().manual_seed(0)
    inputs = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "mm_token_type_ids": (ids == QWEN_SPECIAL_IDS["<|video_pad|>"]).long() * 2,
        "pixel_values_videos": torch.randn(num_visual * 4, 3 * 2 * 14 * 14, generator=generator),
        "video_grid_thw": torch.tensor([[cells, 2 * GRID_SIDE, 2 * GRID_SIDE]]),
        "second_per_grid_ts": torch.tensor([1.0]),
        "labels": labels,
    }
    token = torch.arange(ids.shape[1] - rows - 1, ids.shape[1] - 1)
    pixel = (torch.rand(cells, 28 * GRID_SIDE, 28 * GRID_SIDE, generator=generator) > 0.7).float()
    supervision = Supervision(
        row_sample=torch.zeros(rows, dtype=torch.long),
        row_query=token - 1,
        row_token=token,
        row_instance=torch.zeros(rows, dtype=torch.long),
        row_phrase=torch.zeros(rows, dtype=torch.long),
        visual_keys=[contiguous_keys(visual_start, (cells, GRID_SIDE, GRID_SIDE))],
        grid=torch.tensor([[cells, GRID_SIDE, GRID_SIDE]]),
        instance_sample=torch.tensor([0]),
        cell_masks=[torch.nn.functional.adaptive_avg_pool2d(pixel, (GRID_SIDE, GRID_SIDE))],
        cell_valid=[torch.ones(cells, dtype=torch.bool)],
        pixel_masks=[pixel],
    )
    return {key: value.to(device) for key, value in inputs.items()}, supervision.to(device)


def labelled_ce(model, inputs: dict[str, torch.Tensor], **kwargs) -> tuple[torch.Tensor, object]:
    """Next-token CE with logits only where the next token is labelled; also returns the base output."""
    labels = inputs["labels"]
    model_inputs = {key: value for key, value in inputs.items() if key != "labels"}
    output = model.model(**model_inputs, **kwargs)
    targets = labels[:, 1:]
    keep = targets != -100
    logits = model.lm_head(output.last_hidden_state[:, :-1][keep])
    return torch.nn.functional.cross_entropy(logits.float(), targets[keep]), output


@dataclass
class Bench:
    """One model, its optimizer and inputs; ``step(config)`` runs one training step of a configuration."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    inputs: dict[str, torch.Tensor]
    supervision: Supervision
    loss_cfg: LossConfig
    probe: AttentionProbe | None

    @classmethod
    def build(cls, length: int, rows: int, resize: str, *, eager: bool, probe: bool) -> Bench:
        model, _ = build_backbone(BackboneConfig(attn_implementation="eager" if eager else "sdpa"))
        model.train()
        model.model.visual.requires_grad_(False)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        inputs, supervision = build_inputs(length, rows, torch.device("cpu"))
        loss_cfg = LossConfig(layers=[1, 2, 3], resize=resize)
        return cls(
            model,
            optimizer,
            inputs,
            supervision,
            loss_cfg,
            AttentionProbe(model, loss_cfg.layers) if probe else None,
        )

    def step(self, config: str) -> float:
        """One forward, backward and optimizer step of ``config``; returns its seconds."""
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        request = probe_request(self.supervision)
        if config == "ce_stock":
            loss = self.model(**self.inputs).loss
        elif config == "ce":
            loss, _ = labelled_ce(self.model, self.inputs)
        elif config == "swim":
            with self.probe.capture(request) as maps:
                text, _ = labelled_ce(self.model, self.inputs)
            mask = attention_mask_loss(maps, self.supervision, self.loss_cfg).loss
            loss = composite_loss(text, mask, self.loss_cfg)
        else:
            text, output = labelled_ce(self.model, self.inputs, output_attentions=True)
            maps = {}
            for layer in self.loss_cfg.layers:
                weights = output.attentions[layer].float().mean(dim=1)[request.row_sample, request.row_query]
                maps[layer] = weights.gather(-1, request.key_index) * request.key_valid
            mask = attention_mask_loss(maps, self.supervision, self.loss_cfg).loss
            loss = composite_loss(text, mask, self.loss_cfg)
        loss.backward()
        self.optimizer.step()
        return time.perf_counter() - start


def worker(config: str, length: int, steps: int, rows: int, resize: str) -> dict[str, float]:
    """One configuration in this process: median step seconds and memory in GB."""
    bench = Bench.build(length, rows, resize, eager=config == "eager", probe=config == "swim")
    rss_before = _current_rss_gb()
    times = [bench.step(config) for _ in range(steps + 1)][1:]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    return {
        "tokens": int(bench.inputs["input_ids"].shape[1]),
        "step_s": statistics.median(times),
        "peak_gb": peak,
        "extra_gb": peak - rss_before,
    }


def interleaved(length: int, steps: int, rows: int, resize: str) -> dict[str, float]:
    """``ce`` and ``swim`` steps alternated on one model in this process: median seconds of each.

    Machine noise (other processes, frequency changes) then hits both alike, which separate
    processes measured one after the other do not guarantee. The probe stays installed throughout;
    disarmed, it only forwards to the base kernel.
    """
    bench = Bench.build(length, rows, resize, eager=False, probe=True)
    bench.step("ce")
    bench.step("swim")
    times: dict[str, list[float]] = {"ce": [], "swim": []}
    for _ in range(steps):
        for config in times:
            times[config].append(bench.step(config))
    return {config: statistics.median(values) for config, values in times.items()}


def _current_rss_gb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192, 16384])
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    parser.add_argument("--steps", type=int, default=2, help="measured steps after one warm-up step")
    parser.add_argument("--rows", type=int, default=4, help="supervised query rows")
    parser.add_argument(
        "--budget-gb", type=float, default=12.0, help="skip configurations estimated above this"
    )
    parser.add_argument(
        "--resize",
        choices=("pred_to_mask", "mask_to_pred"),
        default="pred_to_mask",
        help="loss.resize of the mask loss: pixel-resolution masks (the reference) or the token grid",
    )
    parser.add_argument(
        "--interleave",
        action="store_true",
        help="also time ce and swim steps alternated in one process (time ratio only)",
    )
    parser.add_argument("--worker", nargs=2, metavar=("CONFIG", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = worker(args.worker[0], int(args.worker[1]), args.steps, args.rows, args.resize)
        sys.stdout.write(json.dumps(result) + "\n")
        return

    console = Console()
    results: dict[tuple[str, int], dict[str, float] | str] = {}
    for length in args.lengths:
        for config in args.configs:
            estimate = estimate_gb(config, length)
            if estimate > args.budget_gb:
                results[config, length] = f"skipped (~{estimate:.0f} GB)"
                continue
            command = [sys.executable, __file__, "--worker", config, str(length)]
            command += ["--steps", str(args.steps), "--rows", str(args.rows), "--resize", args.resize]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                results[config, length] = f"failed (exit {done.returncode})"
                console.print(done.stderr[-2000:], markup=False)
            else:
                results[config, length] = json.loads(done.stdout.strip().splitlines()[-1])
            console.print(f"{config} @ {length}: {results[config, length]}", markup=False)

    table = Table(title="Training step on the tiny Qwen2.5-VL (CPU)")
    for column in ("length", "tokens", "config", "step s", "peak GB", "extra GB"):
        table.add_column(column, justify="right")
    for length in args.lengths:
        for config in args.configs:
            result = results[config, length]
            if isinstance(result, str):
                table.add_row(str(length), "", config, result, "", "")
                continue
            row = [result["tokens"], result["step_s"], result["peak_gb"], result["extra_gb"]]
            table.add_row(str(length), str(row[0]), config, *(f"{value:.2f}" for value in row[1:]))
    console.print(table)

    ratios = Table(title="Ratios (time, extra memory)")
    for column in ("length", "b/a swim/ce", "c/a eager/ce", "d ce/ce_stock"):
        ratios.add_column(column, justify="right")
    for length in args.lengths:
        cells = []
        for top, bottom in (("swim", "ce"), ("eager", "ce"), ("ce", "ce_stock")):
            a, b = results.get((top, length)), results.get((bottom, length))
            if isinstance(a, dict) and isinstance(b, dict):
                cells.append(f"{a['step_s'] / b['step_s']:.2f}x, {a['extra_gb'] / b['extra_gb']:.2f}x")
            else:
                cells.append("n/a")
        ratios.add_row(str(length), *cells)
    console.print(ratios)

    if args.interleave:
        alternated = Table(title=f"b/a time, ce and swim steps alternated in one process ({args.steps} each)")
        for column in ("length", "ce s", "swim s", "b/a"):
            alternated.add_column(column, justify="right")
        for length in args.lengths:
            medians = interleaved(length, args.steps, args.rows, args.resize)
            ratio = medians["swim"] / medians["ce"]
            alternated.add_row(str(length), f"{medians['ce']:.2f}", f"{medians['swim']:.2f}", f"{ratio:.2f}x")
        console.print(alternated)


if __name__ == "__main__":
    main()
