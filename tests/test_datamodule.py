"""SwimDataset's strict mode on a corrupted corpus (skip semantics: test_skips.py), and
SwimDataModule on a small generated demo: setup, batches (with worker processes), and mid-epoch
resume through a real Lightning checkpoint."""

# ruff: noqa: F811  (pytest fixtures imported from data_fixtures are re-bound as test arguments)
from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from corrupt_corpus import build_corrupt_corpus
from data_fixtures import demo_data_config, processor, small_demo  # noqa: F401

from swim.data.batch import SwimBatch
from swim.data.datamodule import EpochShuffleSampler, ResumableDataLoader, SwimDataModule
from swim.data.dataset import SwimDataset
from swim.data.mixture import build_mixture
from swim.data.sample import DataConfig, SampleBuilder
from swim.data.schema import SampleError

CFG = DataConfig(max_frames=8, min_pixels=4 * 28 * 28, max_pixels=64 * 28 * 28)


@pytest.fixture(scope="module")
def corrupt(tmp_path_factory: pytest.TempPathFactory, processor: Any) -> tuple[Path, dict[int, str], Any]:
    folder = tmp_path_factory.mktemp("corrupt")
    path, expected = build_corrupt_corpus(folder)
    mixture = build_mixture(
        [{"name": "corrupt", "path": str(path)}], seed=0, cache_dir=folder / "cache", strict=False
    )
    return path, expected, mixture


def test_dataset_strict_mode_raises_naming_the_record(
    corrupt: tuple[Path, dict[int, str], Any], processor: Any
) -> None:
    path, expected, mixture = corrupt
    dataset = SwimDataset(mixture, SampleBuilder(processor, CFG), strict=True)
    for i in range(len(mixture)):
        index = mixture[i].index
        if index not in expected:
            continue
        with pytest.raises(SampleError) as info:
            dataset[i]
        rejection = info.value.rejection
        assert (rejection.file, rejection.index, rejection.reason) == (str(path), index, expected[index])
        assert rejection.field and f"record {index}: field {rejection.field}" in str(info.value)


def test_sampler_is_seed_stable_and_splits_ranks() -> None:
    data = list(range(11))
    a = list(EpochShuffleSampler(data, seed=3))
    assert a == list(EpochShuffleSampler(data, seed=3)) and sorted(a) == data
    later = EpochShuffleSampler(data, seed=3)
    later.set_epoch(1)
    assert list(later) != a
    shares = [list(EpochShuffleSampler(data, seed=3, num_replicas=2, rank=r)) for r in (0, 1)]
    assert len(shares[0]) == len(shares[1]) == 6 and set(shares[0]) | set(shares[1]) == set(data)


@pytest.fixture(scope="module")
def demo_cfg(small_demo: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return demo_data_config(small_demo, tmp_path_factory.mktemp("cache"), num_workers=0)


def test_datamodule_on_the_demo(demo_cfg: dict[str, Any], processor: Any) -> None:
    dm = SwimDataModule(demo_cfg, processor)
    dm.setup("fit")
    names = [r["name"] for r in dm.report["train"]]
    assert names == ["nl_refer_d", "nl_refer_q", "llava_video"] and "bench" not in dm.report
    assert [r["name"] for r in dm.report["val"]] == ["val_nl_refer_d"]
    loader = dm.train_dataloader()
    batch = next(iter(loader))
    assert isinstance(batch, SwimBatch) and batch.batch_size == 2
    val = next(iter(dm.val_dataloader()))
    assert val.supervision.num_rows > 0 and val.supervision.pixel_masks is not None
    bench = next(iter(dm.bench_dataloader()))
    assert bench.batch_size == 2 and "bench" in dm.report
    # Worker processes build the same batches as the main process.
    workers = SwimDataModule({**demo_cfg, "num_workers": 2}, processor)
    workers.setup("fit")
    batch2 = next(iter(workers.train_dataloader()))
    assert batch2.sample_ids == batch.sample_ids and torch.equal(batch2.input_ids, batch.input_ids)


def _ids(loader: ResumableDataLoader, epoch: int, limit: int | None = None) -> list[list[str]]:
    loader.sampler.set_epoch(epoch)
    out = []
    for batch in loader:
        out.append(batch.sample_ids)
        if limit is not None and len(out) == limit:
            break
    return out


def test_loader_state_round_trip(demo_cfg: dict[str, Any], processor: Any) -> None:
    dm = SwimDataModule(demo_cfg, processor)
    dm.setup("fit")
    full = _ids(dm.train_dataloader(), epoch=1)
    interrupted = dm.train_dataloader()
    head = _ids(interrupted, epoch=1, limit=2)
    state = interrupted.state_dict()
    assert state == {"epoch": 1, "batches": 2}
    resumed = SwimDataModule(demo_cfg, processor)
    resumed.setup("fit")
    loader = resumed.train_dataloader()
    loader.load_state_dict(state)
    tail = [batch.sample_ids for batch in loader]
    assert head + tail == full
    assert len(loader) == len(full), "the epoch length is unchanged"
    assert _ids(loader, epoch=1) == full, "only the resumed iteration starts late"


class _Recorder(pl.LightningModule):
    """Records the sample ids of every training batch; its one weight gives Lightning a loss."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[list[str]] = []

    def training_step(self, batch: SwimBatch, batch_idx: int) -> torch.Tensor:
        self.seen.append(list(batch.sample_ids))
        return (self.weight - 1).pow(2).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _trainer(tmp_path: Path, callbacks: list[Any]) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        callbacks=callbacks,
        enable_checkpointing=bool(callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )


def test_lightning_resumes_mid_epoch(demo_cfg: dict[str, Any], processor: Any, tmp_path: Path) -> None:
    steps_per_epoch = len(SwimDataModule(demo_cfg, processor).train_dataloader())
    step = steps_per_epoch + 2  # the second batch of the second epoch
    saver = pl.callbacks.ModelCheckpoint(
        dirpath=tmp_path / "ckpt", every_n_train_steps=step, save_top_k=-1, filename="{step}"
    )
    full = _Recorder()
    _trainer(tmp_path, [saver]).fit(full, SwimDataModule(demo_cfg, processor))
    assert len(full.seen) == 2 * steps_per_epoch
    first, second = full.seen[:steps_per_epoch], full.seen[steps_per_epoch:]
    assert sorted(i for ids in first for i in ids) == sorted(i for ids in second for i in ids)
    assert first != second, "epochs are shuffled differently"
    resumed = _Recorder()
    _trainer(tmp_path, []).fit(
        resumed, SwimDataModule(demo_cfg, processor), ckpt_path=str(tmp_path / "ckpt" / f"step={step}.ckpt")
    )
    assert resumed.seen == full.seen[step:]
