"""The LightningDataModule: mixtures -> datasets -> dataloaders of :class:`SwimBatch`.

The training loader shuffles with an epoch-seeded permutation (:class:`EpochShuffleSampler`) and
remembers how many batches it has handed out in the current epoch (:class:`ResumableDataLoader`).
Lightning 2.6 saves the state of any train dataloader that has ``state_dict``/``load_state_dict``
in the checkpoint (``loops.fit_loop.state_dict.combined_loader``) and restores it before the
resumed epoch starts, so ``ckpt_path=...`` continues mid-epoch with the next unseen batch. The
sampler subclasses ``DistributedSampler``, so Lightning keeps it under DDP instead of wrapping it;
each rank draws its share of the same permutation.

With ``data.max_tokens_per_batch`` set, the training loader yields token-budget batches instead
(``swim.data.budget``): the :class:`~swim.data.budget.TokenBudgetSampler`, also a
``DistributedSampler``, is the loader's ``sampler`` with ``batch_size=None`` and yields whole
batches of indices, so Lightning neither wraps it nor needs to inject a sampler into a batch
sampler. Each training sample's length is computed from its record at setup
(``swim.data.lengths``: exact, cached next to the records cache); a sample longer than the budget
alone is an error naming the record with ``data.strict``, else left out of the sampler and
counted in the split's report as ``over_token_budget``.

With ``data.packing=true`` as well, the same sampler packs samples first-fit into single rows of at
most ``max_tokens_per_batch`` tokens and the training collator is
:func:`~swim.data.packing.collate_packed` (no padding; the model sees block-causal sequences).
Validation and bench loaders stay padded.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator, Mapping, Sized
from dataclasses import dataclass, fields, replace
from typing import Any

import lightning.pytorch as pl
import numpy as np
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, DistributedSampler

from swim.data.budget import BatchView, TokenBudgetSampler
from swim.data.collate import collate
from swim.data.dataset import SwimDataset
from swim.data.lengths import mixture_lengths
from swim.data.mixture import Mixture, build_mixture, source_configs
from swim.data.packing import collate_packed
from swim.data.positions import MRope
from swim.data.sample import DataConfig, SampleBuilder
from swim.data.spec import VisualSpec

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "bench")
STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("bench",), "predict": ("bench",)}


class EpochShuffleSampler(DistributedSampler):
    """A seed-stable shuffle (permutation seeded by ``seed + epoch``) that can start mid-epoch.

    ``start`` skips the first indices of this rank's share on the next iteration only (a resumed
    epoch); ``len`` stays the full share so Lightning's batch counting is unchanged.
    """

    def __init__(
        self,
        dataset: Sized,
        *,
        seed: int,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
    ):
        super().__init__(
            dataset,  # type: ignore[arg-type]
            num_replicas=num_replicas,
            rank=rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
        )
        self.start = 0

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        start, self.start = self.start, 0
        return iter(indices[start:])


class ResumableDataLoader(DataLoader):
    """A DataLoader whose ``state_dict`` is (epoch, batches handed out this epoch).

    Works with any number of workers: batches are counted in the main process as they are yielded
    (Lightning fetches sized loaders without look-ahead). Its sampler must be an
    :class:`EpochShuffleSampler`, or a :class:`~swim.data.budget.TokenBudgetSampler` with
    ``batch_size=None`` (each sampler item is a batch).
    """

    _epoch = 0
    _batches = 0
    _resume: dict[str, int] | None = None

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        sampler = self.sampler
        if not isinstance(sampler, (EpochShuffleSampler, TokenBudgetSampler)):
            yield from super().__iter__()
            return
        self._epoch, self._batches = sampler.epoch, 0
        resume, self._resume = self._resume, None
        if resume is not None and resume["epoch"] == sampler.epoch:
            self._batches = resume["batches"]
            sampler.start = self._batches * int(self.batch_size or 1)
        for batch in super().__iter__():
            self._batches += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._epoch, "batches": self._batches}

    def load_state_dict(self, state_dict: Mapping[str, int]) -> None:
        """Resume at batch ``batches`` of epoch ``epoch`` on the next iteration over that epoch."""
        self._resume = {"epoch": int(state_dict["epoch"]), "batches": int(state_dict["batches"])}
        if isinstance(self.sampler, (EpochShuffleSampler, TokenBudgetSampler)):
            self.sampler.set_epoch(self._resume["epoch"])


@dataclass
class LoaderConfig:
    """Dataloader knobs (top-level keys of ``conf/data/*.yaml`` next to :class:`DataConfig`'s).

    Attributes:
        batch_size: samples per batch and device.
        val_batch_size: batch size of the val and bench loaders (``None``: ``batch_size``).
        num_workers: dataloader worker processes.
        pin_memory: pin host memory of batches.
        persistent_workers: keep workers alive between epochs (only with ``num_workers > 0``).
        seed: seed of the mixtures' ``random:`` sampling rules and of the training shuffle.
        cache_dir: root of the records cache (``<cache_dir>/records/...``).
        demo_dir: folder of the synthetic demo that source paths interpolate; ``train.py`` generates
            it there first (``swim.data.demo.ensure_demo``). Not used by the datamodule itself.
        root: base folder that source paths may interpolate (informational).
        dedupe: keep only the first copy of exact duplicate records (counted and reported either way).
        max_tokens_per_batch: ``None``: training batches of ``batch_size`` samples; else token-budget
            training batches of similar-length samples with ``len(batch) * max_len`` at most this
            (``swim.data.budget``; ``batch_size`` then only sets the val and bench batch size
            unless ``val_batch_size`` does).
        bucket_ratio: width of the length buckets of token-budget batches: lengths within one
            bucket differ by less than this factor (> 1).
        packing: pack training samples first-fit into one row of at most ``max_tokens_per_batch``
            tokens per batch, without padding (``swim.data.packing``); with
            ``max_tokens_per_batch=None`` a row holds up to ``data.max_length`` tokens.
    """

    batch_size: int = 1
    val_batch_size: int | None = None
    num_workers: int = 0
    pin_memory: bool = False
    persistent_workers: bool = False
    seed: int = 0
    cache_dir: str = ".cache"
    demo_dir: str | None = None
    root: str | None = None
    dedupe: bool = False
    max_tokens_per_batch: int | None = None
    bucket_ratio: float = 1.25
    packing: bool = False

    def __post_init__(self) -> None:
        if self.max_tokens_per_batch is not None and self.max_tokens_per_batch < 1:
            raise ValueError(f"data.max_tokens_per_batch={self.max_tokens_per_batch}: expected >= 1 or null")
        if self.bucket_ratio <= 1:
            raise ValueError(f"data.bucket_ratio={self.bucket_ratio}: expected > 1")


class SwimDataModule(pl.LightningDataModule):
    """Train / val / bench loaders of SWIM batches.

    Args:
        cfg: the ``data`` config: ``train``, ``val``, ``bench`` (each ``{sources: {name: {...}}}``
            with ``swim.data.mixture.SourceConfig`` fields, or a list with ``name`` fields),
            :class:`DataConfig` knobs and :class:`LoaderConfig` knobs, all top-level.
        processor: the backbone's processor (built by its family adapter, swim/model/families).
        spec: the family's geometry and visual layout (the adapter's ``spec``); ``None``: the
            default family's (Qwen2.5-VL).
        rope: the backbone's MRoPE parameters (``swim.model.packing.mrope_of``); required with
            ``data.packing=true``.
    """

    def __init__(
        self,
        cfg: Mapping[str, Any] | DictConfig,
        processor: Any,
        spec: VisualSpec | None = None,
        rope: MRope | None = None,
    ):
        super().__init__()
        values = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
        assert isinstance(values, dict)
        known = {f.name for f in fields(DataConfig)} | {f.name for f in fields(LoaderConfig)} | set(SPLITS)
        unknown = sorted(set(values) - known)
        if unknown:
            log.warning("data config: ignoring unknown keys %s", unknown)
        self.sources = {split: source_configs((values.get(split) or {}).get("sources")) for split in SPLITS}
        self.data_cfg = DataConfig.from_mapping(values)
        self.loader_cfg = LoaderConfig(
            **{k: v for k, v in values.items() if k in {f.name for f in fields(LoaderConfig)}}
        )
        if self.loader_cfg.packing and self.loader_cfg.max_tokens_per_batch is None:
            self.loader_cfg = replace(self.loader_cfg, max_tokens_per_batch=self.data_cfg.max_length)
        self.processor = processor
        self.builder = SampleBuilder(processor, self.data_cfg, spec)
        pad_id = processor.tokenizer.pad_token_id
        if pad_id is None:
            raise ValueError("the processor's tokenizer has no pad token id")
        self.collate_fn = functools.partial(collate, pad_id=int(pad_id))
        self.train_collate_fn = self.collate_fn
        if self.loader_cfg.packing:
            if rope is None:
                raise ValueError(
                    "data.packing=true: the datamodule needs the backbone's MRoPE parameters (rope=)"
                )
            self.train_collate_fn = functools.partial(collate_packed, pad_id=int(pad_id), rope=rope)
        self.mixtures: dict[str, Mixture] = {}
        self.datasets: dict[str, SwimDataset] = {}
        self.report: dict[str, list[dict[str, Any]]] = {}
        self.train_lengths: np.ndarray | None = None
        self.budget_counted = False

    def setup(self, stage: str | None = None) -> None:
        """Build the mixtures the stage needs (all configured splits for ``stage=None``), once each.

        With a token budget, also the training samples' lengths (and the check of the budget).
        """
        for split in STAGE_SPLITS.get(stage or "", SPLITS):
            self._ensure(split)
        if "train" in self.datasets and self.loader_cfg.max_tokens_per_batch is not None:
            self._budget_indices()

    def _ensure(self, split: str) -> SwimDataset | None:
        if split in self.datasets:
            return self.datasets[split]
        if not self.sources[split]:
            return None
        mixture = build_mixture(
            self.sources[split],
            seed=self.loader_cfg.seed,
            cache_dir=self.loader_cfg.cache_dir,
            strict=self.data_cfg.strict,
            dedupe=self.loader_cfg.dedupe,
        )
        self.mixtures[split] = mixture
        self.report[split] = [r.to_dict() for r in mixture.report()]
        for r in mixture.report():
            rejected = ", ".join(f"{k} {v}" for k, v in sorted(r.rejected.items())) or "none"
            log.info(
                "data.%s source %s: %d in file, %d sampled, %d kept, rejected: %s",
                split,
                r.name,
                r.in_file,
                r.sampled,
                r.kept,
                rejected,
            )
        if len(mixture) == 0:
            raise ValueError(
                f"data.{split}: the mixture has no valid record (see the per-source report above)"
            )
        self.datasets[split] = SwimDataset(mixture, self.builder, strict=self.data_cfg.strict)
        return self.datasets[split]

    def _budget_indices(self) -> tuple[np.ndarray, np.ndarray]:
        """``(N,)`` lengths of the training samples and the positions within the token budget.

        Raises:
            ValueError: with ``data.strict``, a sample longer than the budget, naming its record.
        """
        if self.train_lengths is None:
            self.train_lengths = mixture_lengths(
                self.mixtures["train"], self.builder, strict=self.data_cfg.strict
            )
        budget = self.loader_cfg.max_tokens_per_batch
        assert budget is not None
        lengths, mixture = self.train_lengths, self.mixtures["train"]
        over = np.flatnonzero(lengths > budget)
        if len(over) and (self.data_cfg.strict or len(over) == len(lengths)):
            record = mixture[int(over[0])]
            raise ValueError(
                f"{record.file}: record {record.index}: {int(lengths[over[0]])} tokens exceed "
                f"data.max_tokens_per_batch={budget} ({len(over)} of {len(lengths)} training samples do); "
                "raise the budget or lower data.max_frames / data.max_pixels"
            )
        if len(over) and not self.budget_counted:
            self.budget_counted = True
            self._count_over_budget(over, lengths, budget)
        return lengths, np.flatnonzero(lengths <= budget)

    def _count_over_budget(self, over: np.ndarray, lengths: np.ndarray, budget: int) -> None:
        """Log the samples left out for the budget and count them in the train split's report."""
        mixture = self.mixtures["train"]
        by_name = {r["name"]: r for r in self.report["train"]}
        for i in over.tolist():
            entry = by_name[mixture.source_of(i)]
            entry["kept"] -= 1
            entry["rejected"]["over_token_budget"] = entry["rejected"].get("over_token_budget", 0) + 1
            examples = entry["examples"].setdefault("over_token_budget", [])
            if len(examples) < 3:
                record = mixture[i]
                examples.append(
                    f"{record.file}: record {record.index}: {int(lengths[i])} tokens exceed "
                    f"data.max_tokens_per_batch={budget}"
                )
        log.warning(
            "data.train: %d of %d samples exceed data.max_tokens_per_batch=%d and are left out (first: %s)",
            len(over),
            len(lengths),
            budget,
            by_name[mixture.source_of(int(over[0]))]["examples"]["over_token_budget"][0],
        )

    def _loader_kwargs(self) -> dict[str, Any]:
        cfg = self.loader_cfg
        return {
            "num_workers": cfg.num_workers,
            "pin_memory": cfg.pin_memory,
            "persistent_workers": cfg.persistent_workers and cfg.num_workers > 0,
            "collate_fn": self.collate_fn,
        }

    def train_dataloader(self) -> ResumableDataLoader:
        dataset = self._require("train")
        trainer = self.trainer
        ranks = {
            "num_replicas": trainer.world_size if trainer is not None else 1,
            "rank": trainer.global_rank if trainer is not None else 0,
        }
        budget = self.loader_cfg.max_tokens_per_batch
        if budget is not None:
            lengths, indices = self._budget_indices()
            batches = TokenBudgetSampler(
                dataset,
                lengths,
                max_tokens=budget,
                seed=self.loader_cfg.seed,
                bucket_ratio=self.loader_cfg.bucket_ratio,
                indices=indices,
                packing=self.loader_cfg.packing,
                **ranks,
            )
            kwargs = {**self._loader_kwargs(), "collate_fn": self.train_collate_fn}
            return ResumableDataLoader(BatchView(dataset), batch_size=None, sampler=batches, **kwargs)
        sampler = EpochShuffleSampler(dataset, seed=self.loader_cfg.seed, **ranks)
        return ResumableDataLoader(
            dataset, batch_size=self.loader_cfg.batch_size, sampler=sampler, **self._loader_kwargs()
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def bench_dataloader(self) -> DataLoader:
        """Teacher-forced batches of the bench split (``test_dataloader`` too)."""
        return self._eval_loader("bench")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("bench")

    def _eval_loader(self, split: str) -> DataLoader:
        dataset = self._require(split)
        batch_size = self.loader_cfg.val_batch_size or self.loader_cfg.batch_size
        return DataLoader(dataset, batch_size=batch_size, shuffle=False, **self._loader_kwargs())

    def _require(self, split: str) -> SwimDataset:
        dataset = self._ensure(split)
        if dataset is None:
            raise ValueError(f"data.{split}.sources is empty: no {split} loader")
        return dataset
