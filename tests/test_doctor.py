"""The data doctor's ergonomics: plain-text output, missing files as a table, file-level errors as
one line, silenced decoder noise, tag and mask counters and exact duplicates in the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from corrupt_corpus import build_corrupt_corpus, nl_refer_record, square_frames, write_mp4
from hostile_corpus import build_hostile_corpus

from swim.data.inspect import main


def test_plain_text_keeps_brackets_and_reads_well(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_mp4(tmp_path / "clip.mp4", square_frames())
    bad_size = nl_refer_record("clip.mp4", "Describe the <ins>red square</ins>.", "It moves.")
    bad_size["annotation"][0]["0"]["segmentation"]["size"] = [0, 84]
    no_answer = {"video": "clip.mp4", "Question": "Which?", "options": ["(A) x"], "id": 1}
    lines = [
        json.dumps(bad_size),
        json.dumps(no_answer),
        '{"video": "clip.mp4", "conversations": "unterminated',
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    assert main([str(path), "--cache-dir", str(tmp_path / "cache")]) == 1
    out = capsys.readouterr().out
    assert "expected [h, w] positive integers" in out, "no markup eats [h, w]"
    assert "the record has no `Answer` field" in out and "a `Answer`" not in out
    assert "Unterminated string starting at: column" in out and "at at" not in out
    assert "\x1b[" not in out, "no terminal escapes"


def test_missing_files_are_a_table_not_a_crash(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "data"
    write_mp4(root / "videos" / "clip.mp4", square_frames(num_frames=4))
    record = nl_refer_record("clip.mp4", "Describe the <ins>red square</ins>.", "It moves.", frames=(0, 3))
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "nl_refer_d_1.json").write_text(json.dumps([record]))
    overrides = ["data=nl_refer", f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}"]
    out_json = tmp_path / "report.json"
    assert main([*overrides, "--json", str(out_json)]) == 1
    out = capsys.readouterr().out
    assert "missing annotation files" in out and "Traceback" not in out
    missing = json.loads(out_json.read_text())["missing"]
    assert {(m["split"], m["source"]) for m in missing} >= {("train", "llava_video"), ("bench", "bench_q")}
    assert ("train", "nl_refer_d_1") not in {(m["split"], m["source"]) for m in missing}
    assert str(root / "annotations" / "nl_refer_q.json") in out
    assert json.loads(out_json.read_text())["splits"]["train"][0]["kept"] == 1, (
        "present sources still inspected"
    )


def test_a_file_level_error_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "broken.json"
    path.write_text('[{"video": "a.mp4"}, {"video": ')
    assert main([str(path), "--cache-dir", str(tmp_path / "cache")]) == 1
    captured = capsys.readouterr()
    (line,) = [line for line in captured.out.splitlines() if line.startswith("error:")]
    assert str(path) in line and "record 1" in line and "invalid JSON" in line
    assert "Traceback" not in captured.out + captured.err


def test_deep_check_is_quiet_and_reports_tag_and_mask_counters(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    corrupt, _ = build_corrupt_corpus(tmp_path / "corrupt")
    assert main([str(corrupt), "--cache-dir", str(tmp_path / "cache"), "--deep"]) == 0
    captured = capfd.readouterr()
    assert "moov atom not found" not in captured.err and "Invalid data" not in captured.err
    array, _, _ = build_hostile_corpus(tmp_path / "hostile")
    out_json = tmp_path / "report.json"
    assert main([str(array), "--cache-dir", str(tmp_path / "cache"), "--deep", "--json", str(out_json)]) == 0
    out = capfd.readouterr().out
    assert "tags and masks" in out and "mask_dropped/empty" in out
    (entry,) = json.loads(out_json.read_text())["splits"]["file"]
    counters = entry["load"]["counters"]
    assert counters["mask_dropped/empty"] == 3 and counters["tag_dropped/no_valid_cell"] == 2
    assert entry["duplicates"] == 1 and "exact duplicates" in out
    assert (
        main([str(array), "--cache-dir", str(tmp_path / "cache"), "--dedupe", "--json", str(out_json)]) == 0
    )
    assert json.loads(out_json.read_text())["splits"]["file"][0]["kept"] == entry["kept"] - 1
