"""Token-budget batching (``data.max_tokens_per_batch``): exact lengths from records, the budget,
bucketing against fixed batches, determinism, per-epoch reshuffle, two ranks, mid-epoch resume,
samples over the budget, Lightning (no sampler injection under DDP, schedule length) and a real
``train.py`` run."""

# ruff: noqa: F811  (pytest fixtures imported from data_fixtures are re-bound as test arguments)
from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from data_fixtures import demo_data_config, processor, small_demo  # noqa: F401
from lightning.pytorch.trainer.states import RunningStage
from train_fixtures import FAST, demo_overrides, read_metrics, run_train_py

from swim.data.batch import SwimBatch
from swim.data.budget import TokenBudgetSampler, length_buckets, padded_batches
from swim.data.datamodule import EpochShuffleSampler, ResumableDataLoader, SwimDataModule
from swim.data.lengths import lengths_key, mixture_lengths, record_lengths

BUDGET = 1024


def mixed_lengths(n: int = 400, seed: int = 0) -> np.ndarray:
    """``(n,)`` lengths like NL-Refer's mix: long videos, short video QA, text-only samples."""
    rng = np.random.default_rng(seed)
    kind = rng.choice(3, size=n, p=[0.2, 0.4, 0.4])
    spans = np.array([[600, 1000], [150, 400], [20, 120]])
    return rng.integers(spans[kind, 0], spans[kind, 1]).astype(np.int64)


def padding_fraction(lengths: np.ndarray, batches: list[list[int]]) -> float:
    padded = sum(len(b) * int(lengths[b].max()) for b in batches)
    return 1 - sum(int(lengths[b].sum()) for b in batches) / padded


def test_lengths_from_records_equal_the_built_samples(
    small_demo: Path, processor: Any, tmp_path: Path
) -> None:
    dm = SwimDataModule(demo_data_config(small_demo, tmp_path, num_workers=0), processor)
    dm.setup("fit")
    dataset, mixture = dm.datasets["train"], dm.mixtures["train"]
    lengths = record_lengths(mixture, dm.builder, strict=True)
    kinds = {("video" if r.video else "image" if r.image else "text") for r in mixture}
    assert {"video", "image"} <= kinds
    assert lengths.tolist() == [len(dataset[i]) for i in range(len(dataset))]


def test_lengths_are_cached_next_to_each_sources_records(
    small_demo: Path, processor: Any, tmp_path: Path
) -> None:
    dm = SwimDataModule(demo_data_config(small_demo, tmp_path, num_workers=0), processor)
    dm.setup("fit")
    mixture = dm.mixtures["train"]
    lengths = mixture_lengths(mixture, dm.builder)
    assert lengths.tolist() == record_lengths(mixture, dm.builder).tolist()
    (folder, rows), *_ = mixture.cache_rows()
    path = folder / f"lengths-{lengths_key(dm.builder)}.npy"
    table = np.load(path)
    assert table[np.asarray(rows)].tolist() == lengths[: len(rows)].tolist()
    np.save(path, np.full_like(table, 7))
    assert (mixture_lengths(mixture, dm.builder)[: len(rows)] == 7).all(), "read from the cache"
    other = SwimDataModule(demo_data_config(small_demo, tmp_path, num_workers=0, max_frames=4), processor)
    other.setup("fit")
    assert lengths_key(other.builder) != lengths_key(dm.builder)
    assert (mixture_lengths(other.mixtures["train"], other.builder) != 7).all()


def test_batches_stay_within_the_budget_and_pad_less_than_fixed_batches() -> None:
    lengths = mixed_lengths()
    sampler = TokenBudgetSampler(lengths, lengths, max_tokens=BUDGET, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    assert all(len(b) * int(lengths[b].max()) <= BUDGET for b in batches)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    # Fixed batches with the same tokens per step: the budget over the mean padded length.
    order = list(EpochShuffleSampler(lengths, seed=0))
    fixed_size = 2
    fixed = [order[i : i + fixed_size] for i in range(0, len(order), fixed_size)]
    budget_padding, fixed_padding = padding_fraction(lengths, batches), padding_fraction(lengths, fixed)
    assert budget_padding < 1 - 1 / 1.25 and budget_padding < fixed_padding / 3


def test_shuffles_are_seed_stable_and_differ_per_epoch_with_a_constant_length() -> None:
    lengths = mixed_lengths()
    a, b = (TokenBudgetSampler(lengths, lengths, max_tokens=BUDGET, seed=3) for _ in range(2))
    assert list(a) == list(b)
    epoch0 = list(a)
    a.set_epoch(1)
    epoch1 = list(a)
    assert epoch1 != epoch0 and len(epoch1) == len(epoch0) == len(a)
    assert sorted(map(sorted, epoch1)) != sorted(map(sorted, epoch0)), "batches are regrouped, not reordered"
    other = TokenBudgetSampler(lengths, lengths, max_tokens=BUDGET, seed=4)
    assert list(other) != epoch0


def test_two_ranks_get_equal_batch_counts_covering_the_epoch() -> None:
    lengths = mixed_lengths(n=101)
    single = TokenBudgetSampler(lengths, lengths, max_tokens=BUDGET, seed=0)
    ranks = [
        TokenBudgetSampler(lengths, lengths, max_tokens=BUDGET, seed=0, num_replicas=2, rank=rank)
        for rank in (0, 1)
    ]
    for r in ranks:
        r.set_epoch(2)
    single.set_epoch(2)
    shares = [list(r) for r in ranks]
    assert len(shares[0]) == len(shares[1]) == len(ranks[0]) == len(ranks[1])
    covered = sorted(i for share in shares for b in share for i in b)
    assert set(covered) == set(range(len(lengths)))
    # The ranks interleave the single-process epoch (padded by repeating its first batches).
    everything = single.epoch_batches(2)
    interleaved = [b for pair in zip(*shares, strict=True) for b in pair]
    assert interleaved[: len(everything)] == everything
    assert interleaved[len(everything) :] == everything[: len(interleaved) - len(everything)]


def test_padded_batches_and_buckets() -> None:
    lengths = np.array([100, 120, 124, 126, 1000], dtype=np.int64)
    assert length_buckets(lengths, 1.25).tolist()[:3] == [20, 21, 21]
    assert padded_batches(lengths, np.array([1, 2, 3]), max_tokens=260) == [[1, 2], [3]]
    with pytest.raises(ValueError, match=r"1000 tokens exceeds data\.max_tokens_per_batch=999"):
        padded_batches(lengths, np.array([4]), max_tokens=999)
    with pytest.raises(ValueError, match="bucket_ratio"):
        length_buckets(lengths, 1.0)


def _budget_cfg(small_demo: Path, cache: Path, **overrides: Any) -> dict[str, Any]:
    return demo_data_config(small_demo, cache, num_workers=0, max_tokens_per_batch=BUDGET, **overrides)


def _ids(loader: ResumableDataLoader, epoch: int, limit: int | None = None) -> list[list[str]]:
    loader.sampler.set_epoch(epoch)
    out = []
    for batch in loader:
        out.append(batch.sample_ids)
        if limit is not None and len(out) == limit:
            break
    return out


def test_the_datamodule_yields_budget_batches_and_resumes_mid_epoch(
    small_demo: Path, processor: Any, tmp_path: Path
) -> None:
    cfg = _budget_cfg(small_demo, tmp_path)
    dm = SwimDataModule(cfg, processor)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, TokenBudgetSampler)
    batches = []
    for batch in loader:
        assert isinstance(batch, SwimBatch)
        assert batch.input_ids.numel() <= BUDGET
        batches.append(batch)
    assert sorted(i for b in batches for i in b.sample_ids) == sorted(r.id for r in dm.mixtures["train"])
    assert any(b.batch_size > 2 for b in batches), "short samples share a batch"
    workers = SwimDataModule({**cfg, "num_workers": 2}, processor)
    workers.setup("fit")
    assert [b.sample_ids for b in workers.train_dataloader()] == [b.sample_ids for b in batches]
    full = _ids(dm.train_dataloader(), epoch=1)
    interrupted = dm.train_dataloader()
    head = _ids(interrupted, epoch=1, limit=2)
    assert interrupted.state_dict() == {"epoch": 1, "batches": 2}
    resumed = SwimDataModule(cfg, processor)
    resumed.setup("fit")
    again = resumed.train_dataloader()
    again.load_state_dict(interrupted.state_dict())
    assert head + [b.sample_ids for b in again] == full
    assert len(again) == len(full) and _ids(again, epoch=1) == full


def test_a_sample_over_the_budget_is_counted_or_an_error_naming_it(
    small_demo: Path, processor: Any, tmp_path: Path
) -> None:
    cfg = _budget_cfg(small_demo, tmp_path)
    dm = SwimDataModule(cfg, processor)
    dm.setup("fit")
    lengths = record_lengths(dm.mixtures["train"], dm.builder)
    budget = int(np.sort(lengths)[-3])  # the two longest samples are over it
    lenient = SwimDataModule({**cfg, "max_tokens_per_batch": budget}, processor)
    lenient.setup("fit")
    loader = lenient.train_dataloader()
    seen = {i for b in loader.sampler for i in b}
    assert seen == set(np.flatnonzero(lengths <= budget).tolist())
    rejected = {r["name"]: r["rejected"].get("over_token_budget", 0) for r in lenient.report["train"]}
    assert sum(rejected.values()) == 2
    strict = SwimDataModule({**cfg, "max_tokens_per_batch": budget, "strict": True}, processor)
    first = dm.mixtures["train"][int(np.flatnonzero(lengths > budget)[0])]
    with pytest.raises(ValueError, match=f"exceed data.max_tokens_per_batch={budget}") as info:
        strict.setup("fit")
    assert str(info.value).startswith(f"{first.file}: record {first.index}: ")


class _Recorder(pl.LightningModule):
    """Records each training batch's sample ids and the schedule length Lightning estimates."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[list[str]] = []
        self.stepping_batches = -1

    def training_step(self, batch: SwimBatch, batch_idx: int) -> torch.Tensor:
        self.seen.append(list(batch.sample_ids))
        return (self.weight - 1).pow(2).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        self.stepping_batches = int(self.trainer.estimated_stepping_batches)
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_keeps_the_sampler_and_sizes_the_schedule(
    small_demo: Path, processor: Any, tmp_path: Path
) -> None:
    cfg = _budget_cfg(small_demo, tmp_path)
    steps_per_epoch = len(SwimDataModule(cfg, processor).train_dataloader())
    module = _Recorder()
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        accumulate_grad_batches=2,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, SwimDataModule(cfg, processor))
    assert len(module.seen) == 2 * steps_per_epoch
    assert module.stepping_batches == trainer.global_step == 2 * -(-steps_per_epoch // 2)
    first, second = module.seen[:steps_per_epoch], module.seen[steps_per_epoch:]
    assert sorted(i for ids in first for i in ids) == sorted(i for ids in second for i in ids)
    assert first != second
    # Under DDP Lightning injects its own DistributedSampler into loaders whose sampler is not one.
    ddp = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, default_root_dir=tmp_path)
    dm = SwimDataModule(cfg, processor)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert ddp._data_connector._requires_distributed_sampler(EmptyLoader()) is True
    assert ddp._data_connector._prepare_dataloader(loader, shuffle=True, mode=RunningStage.TRAINING) is loader


class EmptyLoader(torch.utils.data.DataLoader):
    """A plain loader, the control of the DDP check: Lightning would replace its sampler."""

    def __init__(self) -> None:
        super().__init__(list(range(4)), batch_size=2)


@pytest.mark.slow
def test_train_py_with_a_token_budget(train_demo: Path, records_cache: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_train_py(
        [
            *FAST,
            *demo_overrides(train_demo, records_cache),
            "data.max_tokens_per_batch=1024",
            "model.scheduler.name=cosine",
            f"hydra.run.dir={run_dir}",
        ]
    )
    metrics = read_metrics(run_dir)
    assert metrics["global_step"] == 2
