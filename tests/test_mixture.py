"""Mixtures: sampling rules, JSON and JSON Lines, the memory-mapped cache, pickling, reports, strict mode."""

from __future__ import annotations

import json
import logging
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from corrupt_corpus import build_corrupt_corpus

from swim.data.mixture import MissingSourceError, Mixture, SourceConfig, build_mixture, parse_sampling
from swim.data.schema import Record, RecordError


def records(n: int, bad: tuple[int, ...] = ()) -> list[dict[str, Any]]:
    """``n`` LLaVA-Video records over ``clip.mp4``; those in ``bad`` have no assistant turn."""
    out = []
    for i in range(n):
        turns = [{"from": "human", "value": f"<video>\nQuestion {i}?"}]
        if i not in bad:
            turns.append({"from": "gpt", "value": f"Answer {i}."})
        out.append({"id": f"r{i}", "video": "clip.mp4", "conversations": turns})
    return out


def write(folder: Path, name: str, items: list[dict[str, Any]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "clip.mp4").write_bytes(b"\x00")
    path = folder / name
    if name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(item) + "\n" for item in items))
    else:
        path.write_text(json.dumps(items, indent=1))
    return path


def ids(mixture: Mixture) -> list[str]:
    return [record.id for record in mixture]


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("all", list(range(10))),
        ("first:3", [0, 1, 2]),
        ("end:3", [7, 8, 9]),
        ("first:30%", [0, 1, 2]),
        ("end:25%", [7, 8, 9]),
        ("first:0", []),
        ("first:50", list(range(10))),
        ("end:100%", list(range(10))),
        (" random:10 ", list(range(10))),
        ("random:0.5%", []),
    ],
)
def test_sampling_rules(rule: str, expected: list[int]) -> None:
    assert parse_sampling(rule, 10, seed=0, name="s").tolist() == expected


def test_random_sampling_is_deterministic_per_seed_and_source() -> None:
    first = parse_sampling("random:30%", 1000, seed=1, name="a")
    assert len(first) == 300 and len(set(first.tolist())) == 300
    assert np.all(np.diff(first) > 0) and first.min() >= 0 and first.max() < 1000
    assert np.array_equal(first, parse_sampling("random:300", 1000, seed=1, name="a"))
    assert not np.array_equal(first, parse_sampling("random:300", 1000, seed=2, name="a"))
    assert not np.array_equal(first, parse_sampling("random:300", 1000, seed=1, name="b"))


@pytest.mark.parametrize(
    "rule", ["some", "first", "first:-1", "random:3.5", "end:101%", "last:3", "all:3", ""]
)
def test_bad_sampling_rules(rule: str) -> None:
    with pytest.raises(ValueError, match=f"source 's': sampling={rule!r}"):
        parse_sampling(rule, 10, seed=0, name="s")


def test_json_and_jsonl_sources_and_report(tmp_path: Path) -> None:
    items = records(20, bad=(3, 4, 17))
    array = write(tmp_path / "a", "train.json", items)
    lines = write(tmp_path / "b", "train.jsonl", items)
    mixture = build_mixture(
        [
            {"name": "array", "path": str(array)},
            SourceConfig(name="lines", path=str(lines), sampling="first:5", supervise=False, weight=2.0),
        ],
        seed=0,
        cache_dir=tmp_path / "cache",
        strict=False,
    )
    assert len(mixture) == 17 + 3
    assert ids(mixture) == [f"r{i}" for i in range(20) if i not in (3, 4, 17)] + ["r0", "r1", "r2"]
    first, last = mixture[0], mixture[-1]
    assert isinstance(first, Record) and first.source == "array" and first.supervise is True
    assert first.file == str(array) and first.index == 0 and first.video == str(tmp_path / "a" / "clip.mp4")
    assert last.source == "lines" and last.supervise is False and last.file == str(lines) and last.index == 2
    assert mixture[3].id == "r5" and mixture[3].turns[0].text == "Question 5?"
    assert mixture.source_names == ["array", "lines"] and mixture.source_of(17) == "lines"
    assert mixture.source_ranges() == {"array": range(0, 17), "lines": range(17, 20)}
    assert mixture.sample_weights().tolist() == [1.0] * 17 + [2.0] * 3
    array_report, lines_report = mixture.report()
    assert (array_report.in_file, array_report.sampled, array_report.kept) == (20, 20, 17)
    assert array_report.rejected == {"no_assistant_turn": 3}
    assert len(array_report.examples["no_assistant_turn"]) == 3
    assert array_report.examples["no_assistant_turn"][0].startswith(
        f"{array}: record 3: field conversations:"
    )
    assert (lines_report.in_file, lines_report.sampled, lines_report.kept, lines_report.rejected) == (
        20,
        5,
        3,
        {"no_assistant_turn": 2},
    )
    assert json.loads(json.dumps([r.to_dict() for r in mixture.report()]))[0]["name"] == "array"
    with pytest.raises(IndexError):
        mixture[20]
    with pytest.raises(TypeError):
        mixture["0"]  # type: ignore[index]


def test_sampled_mixture_depends_on_seed(tmp_path: Path) -> None:
    path = write(tmp_path, "a.json", records(50))
    source = [{"name": "s", "path": str(path), "sampling": "random:20%"}]
    one = ids(build_mixture(source, seed=1, cache_dir=tmp_path / "c", strict=False))
    again = ids(build_mixture(source, seed=1, cache_dir=tmp_path / "c", strict=False))
    other = ids(build_mixture(source, seed=2, cache_dir=tmp_path / "c", strict=False))
    assert len(one) == 10 and one == again and one != other


def test_cache_is_reused_and_invalidated(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path, "a.json", records(6))
    source = [{"name": "s", "path": str(path)}]
    caplog.set_level(logging.INFO, logger="swim.data.cache")
    first = build_mixture(source, seed=0, cache_dir=tmp_path / "c", strict=False)
    assert sum("cached" in m for m in caplog.messages) == 1
    folder = Path(first.report()[0].cache)
    built_at = (folder / "records.arrow").stat().st_mtime_ns

    caplog.clear()
    second = build_mixture(source, seed=0, cache_dir=tmp_path / "c", strict=False)
    assert not any("cached" in m for m in caplog.messages)
    assert (
        second.report()[0].cache == str(folder) and (folder / "records.arrow").stat().st_mtime_ns == built_at
    )
    assert ids(second) == ids(first)

    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    third = build_mixture(source, seed=0, cache_dir=tmp_path / "c", strict=False)
    assert third.report()[0].cache != str(folder) and ids(third) == ids(first)

    write(tmp_path, "a.json", records(6, bad=(0,)))
    fourth = build_mixture(source, seed=0, cache_dir=tmp_path / "c", strict=False)
    assert ids(fourth) == ids(first)[1:] and fourth.report()[0].rejected == {"no_assistant_turn": 1}
    assert len(list((tmp_path / "c" / "records").iterdir())) == 3


def test_mixture_pickles_small_and_loads_in_workers(tmp_path: Path) -> None:
    big = records(300)
    for item in big:
        item["conversations"][1]["value"] = "long answer " * 200
    path = write(tmp_path, "a.json", big)
    mixture = build_mixture(
        [{"name": "s", "path": str(path)}], seed=0, cache_dir=tmp_path / "c", strict=False
    )
    assert mixture[0].turns[1].text.startswith("long answer")
    blob = pickle.dumps(mixture)
    assert len(blob) < 8_000 < path.stat().st_size // 50
    clone = pickle.loads(blob)
    assert clone[299] == mixture[299] and len(clone) == 300
    loader = torch.utils.data.DataLoader(mixture, batch_size=4, num_workers=2, collate_fn=list)
    seen = [record.id for batch in loader for record in batch]
    assert seen == [f"r{i}" for i in range(300)]


def test_strict_mode_names_file_index_and_field(tmp_path: Path) -> None:
    path = write(tmp_path, "a.jsonl", records(8, bad=(5,)))
    source = [{"name": "s", "path": str(path), "sampling": "first:5"}]
    assert len(build_mixture(source, seed=0, cache_dir=tmp_path / "c", strict=True)) == 5
    source[0]["sampling"] = "all"
    with pytest.raises(RecordError, match=rf"^{path}: record 5: field conversations: no_assistant_turn: "):
        build_mixture(source, seed=0, cache_dir=tmp_path / "c", strict=True)


def test_video_root_and_explicit_format(tmp_path: Path) -> None:
    path = write(tmp_path / "ann", "a.json", records(2))
    (tmp_path / "ann" / "clip.mp4").unlink()
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "clip.mp4").write_bytes(b"\x00")
    rejected = build_mixture(
        [{"name": "s", "path": str(path)}], seed=0, cache_dir=tmp_path / "c", strict=False
    )
    assert len(rejected) == 0 and rejected.report()[0].rejected == {"missing_video": 2}
    source = {"name": "s", "path": str(path), "video_root": str(tmp_path / "videos"), "format": "llava_video"}
    mixture = build_mixture([source], seed=0, cache_dir=tmp_path / "c", strict=False)
    assert mixture[1].video == str(tmp_path / "videos" / "clip.mp4") and mixture[1].format == "llava_video"


def test_bad_source_configs(tmp_path: Path) -> None:
    path = write(tmp_path, "a.json", records(2))
    cases = [
        ([{"name": "s", "path": str(path), "shuffle": True}], ValueError, "unknown keys \\['shuffle'\\]"),
        ([{"name": "s", "path": str(path)}] * 2, ValueError, "unique names; repeated: \\['s'\\]"),
        ([{"name": "s", "path": str(path), "format": "csv"}], ValueError, "format='csv'"),
        ([{"name": "s", "path": str(path), "weight": -1}], ValueError, "weight=-1"),
        (
            [{"name": "s", "path": str(tmp_path / "none.json")}],
            FileNotFoundError,
            "source 's': annotation file .*none.json does not exist",
        ),
    ]
    for sources, error, message in cases:
        with pytest.raises(error, match=message):
            build_mixture(sources, seed=0, cache_dir=tmp_path / "c", strict=False)


def test_corrupt_corpus_report(tmp_path: Path) -> None:
    path, expected = build_corrupt_corpus(tmp_path)
    mixture = build_mixture(
        [{"name": "corrupt", "path": str(path)}], seed=0, cache_dir=tmp_path / "c", strict=False
    )
    report = mixture.report()[0]
    assert report.in_file == 17
    assert sum(report.rejected.values()) == 17 - report.kept
    assert report.rejected == {
        "missing_video": 1,
        "bad_tags": 3,
        "tag_without_word": 1,
        "empty_conversation": 1,
        "no_assistant_turn": 1,
        "invalid_utf8": 1,
    }
    kept = {record.index for record in mixture}
    assert {i for i, reason in expected.items() if reason in report.rejected}.isdisjoint(kept)


def test_sources_keyed_by_name_and_missing_or_optional_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path, "a.json", records(2))
    keyed = {"a": {"path": str(path)}, "dropped": None}
    mixture = build_mixture(keyed, seed=0, cache_dir=tmp_path / "c", strict=False)
    assert mixture.source_names == ["a"] and len(mixture) == 2
    with pytest.raises(ValueError, match="source 'a': its name field says 'b'"):
        build_mixture({"a": {"name": "b", "path": str(path)}}, seed=0, cache_dir=tmp_path / "c", strict=False)
    gone = str(tmp_path / "gone.json")
    with pytest.raises(
        MissingSourceError, match=f"data source 'extra': annotation file {gone} does not exist"
    ):
        build_mixture({**keyed, "extra": {"path": gone}}, seed=0, cache_dir=tmp_path / "c", strict=False)
    with caplog.at_level(logging.WARNING, logger="swim.data.mixture"):
        optional = {**keyed, "extra": {"path": gone, "optional": True}}
        mixture = build_mixture(optional, seed=0, cache_dir=tmp_path / "c", strict=False)
    assert mixture.source_names == ["a"]
    assert any("'extra'" in r.getMessage() and "optional" in r.getMessage() for r in caplog.records)
