"""Skip semantics on the corrupted corpus: each bad record is skipped and counted once per epoch,
each good record seen exactly once, with 1 and 2 worker processes, for training and validation,
and a mid-epoch resume continues with the same batches; then the module's side (placeholder
batches stepped over, validation skips logged)."""

# ruff: noqa: F811  (pytest fixtures imported from data_fixtures are re-bound as test arguments)
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from corrupt_corpus import LOAD_TIME, build_corrupt_corpus
from data_fixtures import SMALL_CFG, processor  # noqa: F401
from module_fixtures import cpu_trainer, loader, make_batch, tiny_module

from swim.data.batch import SwimBatch
from swim.data.collate import collate
from swim.data.datamodule import SwimDataModule
from swim.data.dataset import SkippedRecord, SwimDataset
from swim.data.mixture import build_mixture
from swim.data.sample import Sample, SampleBuilder
from swim.data.schema import Rejection


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The corrupt corpus, its mixture, the good record ids and the expected skips by reason."""
    folder = tmp_path_factory.mktemp("skips")
    path, expected = build_corrupt_corpus(folder)
    mixture = build_mixture(
        [{"name": "c", "path": str(path)}], seed=0, cache_dir=folder / "cache", strict=False
    )
    load_time = {i: expected[mixture[i].index] for i in range(len(mixture)) if mixture[i].index in expected}
    good = Counter(mixture[i].id for i in range(len(mixture)) if i not in load_time)
    skips = Counter(f"skipped_records/{reason}" for reason in load_time.values())
    return {
        "path": path,
        "folder": folder,
        "mixture": mixture,
        "load_time": load_time,
        "good": good,
        "skips": skips,
    }


def test_a_failed_record_is_returned_as_skipped_not_replaced(corpus: dict[str, Any], processor: Any) -> None:
    mixture, load_time = corpus["mixture"], corpus["load_time"]
    assert set(load_time.values()) == set(LOAD_TIME)
    dataset = SwimDataset(mixture, SampleBuilder(processor, SMALL_CFG))
    for i in range(len(mixture)):
        item = dataset[i]
        if i in load_time:
            assert isinstance(item, SkippedRecord) and item.position == i
            assert item.rejection.reason == load_time[i] and item.rejection.file == str(corpus["path"])
        else:
            assert isinstance(item, Sample) and item.id == mixture[i].id
    assert dict(dataset.skipped) == dict(Counter(load_time.values()))


def _config(corpus: dict[str, Any], workers: int) -> dict[str, Any]:
    source = {"path": str(corpus["path"])}
    return {
        "train": {"sources": {"c": source}},
        "val": {"sources": {"c_val": source}},
        "batch_size": 2,
        "num_workers": workers,
        "cache_dir": str(corpus["folder"] / "cache"),
        "max_frames": SMALL_CFG.max_frames,
        "min_pixels": SMALL_CFG.min_pixels,
        "max_pixels": SMALL_CFG.max_pixels,
    }


def _epoch(batches: list[SwimBatch]) -> tuple[Counter[str], Counter[str]]:
    ids: Counter[str] = Counter(i for batch in batches for i in batch.sample_ids)
    counters: Counter[str] = Counter()
    for batch in batches:
        counters.update({k: v for k, v in batch.counters.items() if k.startswith("skipped_")})
    return ids, counters


@pytest.mark.parametrize("workers", [1, 2])
def test_every_good_record_once_every_bad_record_counted_once(
    corpus: dict[str, Any], processor: Any, workers: int
) -> None:
    dm = SwimDataModule(_config(corpus, workers), processor)
    dm.setup("fit")
    train = dm.train_dataloader()
    for epoch in (0, 1):
        train.sampler.set_epoch(epoch)
        batches = list(train)
        ids, counters = _epoch(batches)
        assert ids == corpus["good"], f"epoch {epoch}: each good record exactly once"
        placeholders = sum(batch.placeholder for batch in batches)
        assert counters == corpus["skips"] + Counter(
            {"skipped_batches": placeholders} if placeholders else {}
        )
        assert len(batches) == len(train) == -(-len(corpus["mixture"]) // 2)
    val = list(dm.val_dataloader())
    ids, counters = _epoch(val)
    assert ids == corpus["good"]
    assert Counter({k: v for k, v in counters.items() if k != "skipped_batches"}) == corpus["skips"]


def test_resume_mid_epoch_continues_with_the_same_batches(corpus: dict[str, Any], processor: Any) -> None:
    cfg = _config(corpus, 0)
    dm = SwimDataModule(cfg, processor)
    dm.setup("fit")
    full_loader = dm.train_dataloader()
    full_loader.sampler.set_epoch(1)
    full = [(b.sample_ids, b.counters) for b in full_loader]
    interrupted = dm.train_dataloader()
    interrupted.sampler.set_epoch(1)
    head = []
    for batch in interrupted:
        head.append((batch.sample_ids, batch.counters))
        if len(head) == 3:
            break
    resumed = SwimDataModule(cfg, processor)
    resumed.setup("fit")
    tail_loader = resumed.train_dataloader()
    tail_loader.load_state_dict(interrupted.state_dict())
    assert head + [(b.sample_ids, b.counters) for b in tail_loader] == full


def _placeholder(pad_id: int, reason: str = "corrupt_video") -> SwimBatch:
    return collate([SkippedRecord(0, Rejection("f.json", 0, "video", reason, "unreadable"))], pad_id)


def test_collate_drops_skipped_records_and_counts_them(processor: Any) -> None:
    pad_id = processor.tokenizer.pad_token_id
    batch = _placeholder(pad_id)
    assert batch.placeholder and batch.sample_ids == [] and batch.input_ids.tolist() == [[pad_id]]
    assert batch.counters == {"skipped_records/corrupt_video": 1, "skipped_batches": 1}
    assert batch.labels.tolist() == [[-100]] and batch.supervision.num_rows == 0


def test_module_steps_over_placeholders_and_logs_validation_skips(processor: Any) -> None:
    pad_id = processor.tokenizer.pad_token_id
    module = tiny_module()
    before = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    trainer = cpu_trainer(2)
    trainer.fit(module, train_dataloaders=loader([_placeholder(pad_id), _placeholder(pad_id, "bad_rle")]))
    assert not trainer.optimizers[0].state, "no optimiser update from a batch without records"
    assert all(torch.equal(before[n], p) for n, p in module.model.named_parameters())
    assert module.data_counters == {
        "skipped_records/corrupt_video": 1,
        "skipped_records/bad_rle": 1,
        "skipped_batches": 2,
    }
    assert float(trainer.callback_metrics["data/skipped_batches"]) == 2
    good = make_batch(processor, sample_id="good")
    trainer.validate(
        module, dataloaders=loader([good, _placeholder(pad_id), _placeholder(pad_id)]), verbose=False
    )
    metrics = trainer.callback_metrics
    assert float(metrics["val/skipped_records/corrupt_video"]) == 2
    assert float(metrics["val/num_samples"]) == 1


@pytest.mark.slow
def test_train_py_counts_match_the_doctor(corpus: dict[str, Any], tmp_path: Path) -> None:
    """One epoch of train.py over the corrupt corpus: metrics.json and W&B carry the doctor's counts."""
    from test_train import train_in_process
    from train_fixtures import FAST, read_wandb_run

    from swim.data.inspect import main

    source = f"{{c: {{path: {corpus['path']}}}}}"
    overrides = [
        *FAST,
        "data.demo_dir=null",
        f"paths.cache_dir={corpus['folder'] / 'cache'}",
        "~data.train.sources",
        "~data.val.sources",
        "~data.bench.sources",
        f"+data.train.sources={source}",
        f"+data.val.sources={source}",
        "trainer.max_steps=-1",
        "trainer.max_epochs=1",
        "trainer.limit_val_batches=1.0",
        "trainer.num_sanity_val_steps=0",
        "logger=wandb",
    ]
    report = train_in_process(overrides, tmp_path / "run")
    doctor = tmp_path / "doctor.json"
    assert (
        main(
            [
                str(corpus["path"]),
                "--cache-dir",
                str(corpus["folder"] / "cache"),
                "--deep",
                "--json",
                str(doctor),
            ]
        )
        == 0
    )
    failed = json.loads(doctor.read_text())["splits"]["file"][0]["load"]["failed"]
    expected = {f"skipped_records/{reason}": float(n) for reason, n in failed.items()}
    assert expected == {k: float(v) for k, v in corpus["skips"].items()}
    fit = {
        k.removeprefix("data/"): v for k, v in report["fit"].items() if k.startswith("data/skipped_records/")
    }
    val = {
        k.removeprefix("val/"): v
        for k, v in report["validate"].items()
        if k.startswith("val/skipped_records/")
    }
    assert fit == expected and val == expected
    # The grounding metrics count the supervised samples: the two good ones with masks (not llava_0).
    assert report["validate"]["val/num_samples"] == 2
    (wandb_dir,) = (tmp_path / "run" / "wandb").glob("offline-run-*")
    history = read_wandb_run(wandb_dir).history_keys
    assert {f"data/{k}" for k in expected} <= history and {f"val/{k}" for k in expected} <= history
