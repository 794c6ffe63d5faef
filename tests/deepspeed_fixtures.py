"""Helpers of the DeepSpeed tests: a per-rank recorder callback, callbacks that change one rank's
step (a text-only batch, a NaN loss), and training sources with a chosen mix of videos and images.

The callbacks run inside the ``train.py`` rank processes (``+callbacks.<name>._target_=...``); each
rank writes its own files into ``out`` for the test to read.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
from module_fixtures import make_batch


def rank_file(out: Path, rank: int) -> Path:
    return Path(out) / f"rank{rank}.json"


def read_ranks(out: Path, world_size: int = 2) -> list[dict[str, Any]]:
    """What :class:`RankRecorder` wrote, one dict per rank."""
    return [json.loads(rank_file(out, rank).read_text()) for rank in range(world_size)]


def optimizer_parameters(optimizer: Any) -> list[torch.nn.Parameter]:
    """The module parameters an optimizer holds (DeepSpeed ZeRO-3: ``fp16_groups``, 1-2: ``bit16_groups``)."""
    groups = getattr(optimizer, "fp16_groups", None) or getattr(optimizer, "bit16_groups", None)
    if groups is None:  # a torch optimizer (DDP)
        return [param for group in optimizer.param_groups for param in group["params"]]
    return [param for group in groups for param in group]


def gathered_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Full copies of the parameters of a (possibly ZeRO-3 partitioned) module; every rank must call it."""
    import deepspeed

    params = dict(module.named_parameters())
    with deepspeed.zero.GatheredParameters(list(params.values())):
        return {name: param.detach().clone() for name, param in params.items()}


class RankRecorder(L.Callback):
    """Per rank: parameter partitions, the optimiser's parameters and, per step, what ran.

    ``rank{r}.json`` holds ``partition`` (name -> ``[full numel, numel held by this rank]``),
    ``optimized`` (names of the parameters in the ZeRO optimizer), ``base_optimizer`` (the class
    that DeepSpeed's optimizer wraps), ``steps`` (per batch: global step
    before it, loss returned, logged text loss, tower calls, visual kinds, sample ids, skips so far).
    With ``gather``, rank 0 saves the gathered weights as ``gathered_start.pt`` / ``gathered_end.pt``.
    """

    def __init__(self, out: str, gather: list[str] | None = None) -> None:
        self.out = Path(out)
        self.gather = list(gather or [])
        self.record: dict[str, Any] = {"steps": []}
        self._tower_calls = 0

    def _save_gathered(self, trainer: L.Trainer, pl_module: L.LightningModule, when: str) -> None:
        if when in self.gather:
            state = gathered_state_dict(pl_module.model)
            if trainer.is_global_zero:
                torch.save(state, self.out / f"gathered_{when}.pt")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        model = pl_module.model
        names = {id(param): name for name, param in model.named_parameters()}
        self.record["partition"] = {
            name: [int(getattr(param, "ds_numel", param.numel())), int(_local_numel(param))]
            for name, param in model.named_parameters()
        }
        optimizer = trainer.optimizers[0]
        self.record["optimized"] = sorted(names[id(p)] for p in optimizer_parameters(optimizer))
        self.record["world_size"] = trainer.world_size
        self.record["base_optimizer"] = type(getattr(optimizer, "optimizer", optimizer)).__name__
        model.model.visual.register_forward_hook(self._count_tower_call)
        self._save_gathered(trainer, pl_module, "start")

    def _count_tower_call(self, *args: Any) -> None:
        self._tower_calls += 1

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._tower_calls = 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        text_loss = trainer.callback_metrics.get("train/text_loss")
        kinds = [
            kind
            for kind, value in (("image", batch.pixel_values), ("video", batch.pixel_values_videos))
            if value is not None
        ]
        self.record["steps"].append(
            {
                "step": trainer.global_step - 1,
                "loss": float(loss),
                "text_loss": None if text_loss is None else float(text_loss),
                "tower_calls": self._tower_calls,
                "kinds": kinds,
                "ids": list(batch.sample_ids),
                "skips": pl_module.nonfinite_skips,
            }
        )
        rank_file(self.out, trainer.global_rank).write_text(json.dumps(self.record))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save_gathered(trainer, pl_module, "end")
        rank_file(self.out, trainer.global_rank).write_text(json.dumps(self.record))


def _local_numel(param: torch.nn.Parameter) -> int:
    """Elements this rank stores of ``param``: its ZeRO-3 partition, or the whole tensor."""
    partition = getattr(param, "ds_tensor", None)
    return partition.numel() if partition is not None else param.numel()


class NanLossOnRank(L.Callback):
    """Makes one rank's total loss NaN at one step (a NaN text weight; every loss term stays finite).

    NaN ground-truth masks would not do: the BCE rejects targets outside [0, 1] with an error.
    """

    def __init__(self, rank: int, step: int) -> None:
        self.rank = rank
        self.step = step
        self._weight: float | None = None

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            self._weight = pl_module.loss_cfg.text_weight
            pl_module.loss_cfg.text_weight = float("nan")

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._weight is not None:
            pl_module.loss_cfg.text_weight, self._weight = self._weight, None


class TextOnlyOnRank(L.Callback):
    """Replaces one rank's batches by a text-only one (the data pipeline rejects text-only records)."""

    def __init__(self, rank: int) -> None:
        self.rank = rank

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_rank == self.rank:
            text = make_batch(pl_module.processor, video=False, supervised=False, sample_id="text_only")
            for item in fields(text):
                setattr(batch, item.name, getattr(text, item.name))


def train_sources(demo: Path, tmp: Path, videos: int, extra: list[str]) -> list[str]:
    """Overrides replacing ``data.train.sources`` by the first ``videos`` supervised demo videos,
    then ``extra`` (``image``: one demo still each) in an unsupervised source."""
    sources = [
        {
            "name": "videos",
            "path": str(demo / "annotations" / "nl_refer_d.json"),
            "format": "nl_refer",
            "video_root": str(demo),
            "sampling": f"first:{videos}",
            "supervise": True,
        }
    ]
    if extra:
        stills = iter(sorted((demo / "images").iterdir()))
        records = []
        for i, kind in enumerate(extra):
            if kind == "image":
                image = next(stills).relative_to(demo)
                prompt = {"from": "human", "value": "<image>\nDescribe the image."}
                answer = {"from": "gpt", "value": "Coloured shapes on a textured background."}
                records.append({"id": f"image_{i}", "image": str(image), "conversations": [prompt, answer]})
            else:
                raise ValueError(f"unknown extra record kind {kind!r}")
        path = tmp / "extra.json"
        path.write_text(json.dumps(records))
        sources.append(
            {
                "name": "extra",
                "path": str(path),
                "format": "llava_video",
                "video_root": str(demo),
                "sampling": "all",
                "supervise": False,
            }
        )
    return ["~data.train.sources", "+data.train.sources=" + _hydra_list(sources)]


def _hydra_list(sources: list[dict[str, Any]]) -> str:
    """A Hydra override value for a list of flat dicts (strings quoted)."""

    def value(item: Any) -> str:
        if isinstance(item, bool):
            return "true" if item else "false"
        return "'" + str(item) + "'"

    return (
        "[" + ",".join("{" + ",".join(f"{k}:{value(v)}" for k, v in s.items()) + "}" for s in sources) + "]"
    )
