"""Content that is out of range or silently wrong (``hostile_corpus``): counted rejections that
name file, record and field; empty masks, duplicate frame keys, upper-case tags and exact
duplicate records each named and counted."""

# ruff: noqa: F811  (pytest fixtures imported from data_fixtures are re-bound as test arguments)
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from data_fixtures import SMALL_CFG, processor  # noqa: F401
from hostile_corpus import GOOD, build_hostile_corpus

from swim.data.cache import read_status
from swim.data.mixture import build_mixture
from swim.data.records import REJECTION_REASONS
from swim.data.sample import SampleBuilder
from swim.data.schema import RecordError


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[int, tuple[str, str]], Path]:
    folder = tmp_path_factory.mktemp("hostile")
    array, lines, expected = build_hostile_corpus(folder)
    return array, lines, expected, folder / "cache"


def _mixture(path: Path, cache: Path, **kwargs: Any) -> Any:
    return build_mixture([{"name": "h", "path": str(path)}], seed=0, cache_dir=cache, strict=False, **kwargs)


def test_out_of_range_values_are_counted_rejections_naming_the_field(hostile: Any) -> None:
    array, _, expected, cache = hostile
    mixture = _mixture(array, cache)
    (report,) = mixture.report()
    assert report.rejected == dict(Counter(reason for reason, _ in expected.values()))
    status = read_status(Path(report.cache)).to_pylist()
    for index, (reason, field) in expected.items():
        row = status[index]
        assert (row["reason"], row["row"]) == (reason, -1), index
        assert row["field"].startswith(field), (index, row["field"])
        assert len(row["detail"]) < 200, "messages stay short, whatever the value's size"
        assert reason in REJECTION_REASONS
    assert sorted(mixture[i].index for i in range(len(mixture))) == sorted(GOOD.values())


def test_json_lines_with_huge_numbers_and_deep_nesting(hostile: Any) -> None:
    _, lines, _, cache = hostile
    (report,) = _mixture(lines, cache).report()
    assert (report.in_file, report.kept) == (3, 1)
    assert report.rejected == {"number_too_large": 1, "too_deep": 1}


def test_strict_mode_names_file_record_and_field(hostile: Any) -> None:
    array, _, expected, cache = hostile
    with pytest.raises(RecordError) as info:
        build_mixture([{"name": "h", "path": str(array)}], seed=0, cache_dir=cache, strict=True)
    first = min(expected)
    assert f"{array}: record {first}: field {expected[first][1]}" in str(info.value)


def test_exact_duplicates_are_counted_and_dropped_with_dedupe(hostile: Any) -> None:
    array, _, _, cache = hostile
    kept = _mixture(array, cache)
    (report,) = kept.report()
    assert (
        report.duplicates == 1
        and f"record {GOOD['duplicate']} repeats h record 0" in report.duplicate_examples[0]
    )
    deduped = _mixture(array, cache, dedupe=True)
    assert len(deduped) == len(kept) - 1 and deduped.report()[0].kept == report.kept - 1
    assert GOOD["duplicate"] not in {deduped[i].index for i in range(len(deduped))}


def _built(hostile: Any, processor: Any, name: str) -> Any:
    array, _, _, cache = hostile
    mixture = _mixture(array, cache)
    record = next(mixture[i] for i in range(len(mixture)) if mixture[i].index == GOOD[name])
    return SampleBuilder(processor, SMALL_CFG).build(record)


def test_upper_case_tags_are_accepted_as_tags(hostile: Any, processor: Any) -> None:
    sample = _built(hostile, processor, "upper_case_tags")
    assert len(sample.rows) > 0 and sample.phrases and set(sample.phrases) == {"red square"}
    text = processor.tokenizer.decode(sample.input_ids)
    assert "ins>" not in text.lower()


def test_an_empty_mask_is_left_out_and_counted(hostile: Any, processor: Any) -> None:
    sample = _built(hostile, processor, "one_empty_mask")
    assert sample.counters["mask_dropped/empty"] == 1 and sample.counters["tags/kept"] == 2
    (valid,) = sample.cell_valid
    # Frames 0..7 sampled: annotated 0 and 6 remain (cells 0 and 3); frame 3's empty mask is gone.
    assert valid.tolist() == [True, False, False, True]


def test_a_record_with_only_empty_masks_trains_on_ce_alone(hostile: Any, processor: Any) -> None:
    sample = _built(hostile, processor, "only_empty_masks")
    assert len(sample.rows) == 0 and not sample.cell_masks
    assert sample.counters["mask_dropped/empty"] == 2
    assert sample.counters["tag_dropped/no_valid_cell"] == 2 and "tags/kept" not in sample.counters
    assert bool((sample.labels != -100).any()), "the answer is still trained"
