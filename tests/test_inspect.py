"""The data doctor: file mode, config mode (the nl_refer mixture on a fixture tree), deep checks, renders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from corrupt_corpus import (
    LOAD_TIME,
    PARSE_TIME,
    build_corrupt_corpus,
    nl_refer_record,
    square_frames,
    write_mp4,
)
from PIL import Image

from swim.data.demo import ensure_demo
from swim.data.inspect import main
from swim.data.mixture import build_mixture

NL_REFER_FILES = {
    "annotations/nl_refer_d_1.json": "videos",
    "annotations/nl_refer_d_2.json": "videos",
    "annotations/nl_refer_d_3.json": "videos",
    "annotations/nl_refer_d_4.json": "videos",
    "annotations/nl_refer_q.json": "videos",
    "annotations/llava_video_178k.json": "llava_video",
    "annotations/videorefer_bench_q.json": "bench_videos",
    "annotations/videorefer_bench_q_nlrefer.json": "bench_videos",
    "annotations/videorefer_bench_d.json": "bench_videos",
    "annotations/videorefer_bench_d_nlrefer.json": "bench_videos",
}


def test_file_mode_json_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, expected = build_corrupt_corpus(tmp_path / "corpus")
    out = tmp_path / "report.json"
    assert main([str(path), "--cache-dir", str(tmp_path / "cache"), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    (source,) = report["splits"]["file"]
    assert (source["name"], source["in_file"], source["sampled"]) == ("corrupt", 17, 17)
    parse_time = [reason for reason in expected.values() if reason in PARSE_TIME]
    assert sum(source["rejected"].values()) == len(parse_time) == 17 - source["kept"]
    assert set(source["rejected"]) == set(parse_time)
    assert source["examples"]["missing_video"][0].startswith(f"{path}: record 3: field video: missing_video:")
    assert report["totals"]["file"]["kept"] == source["kept"]
    assert "missing_video" in report["reasons"] and "load" not in source
    printed = capsys.readouterr().out
    assert "data.file" in printed and "tag_without_word" in printed


def test_file_mode_deep_counts_load_failures_and_renders(tmp_path: Path) -> None:
    path, expected = build_corrupt_corpus(tmp_path / "corpus")
    out, renders = tmp_path / "report.json", tmp_path / "renders"
    args = [str(path), "--cache-dir", str(tmp_path / "cache"), "--json", str(out), "--deep"]
    assert main([*args, "--render", "3", "--out", str(renders)]) == 0
    report = json.loads(out.read_text())
    load = report["splits"]["file"][0]["load"]
    load_time = sorted(reason for reason in expected.values() if reason in LOAD_TIME)
    assert sorted(load["failed"]) == load_time and all(n == 1 for n in load["failed"].values())
    assert load["checked"] == 17 - sum(report["splits"]["file"][0]["rejected"].values())
    assert load["ok"] == load["checked"] - len(load_time) == 3
    assert load["examples"]["not_a_video"][0].startswith(f"{path}: record 15: field video: not_a_video:")
    drawn = report["renders"]["file"]
    assert len(drawn) == 3 and sum("png" in d for d in drawn) >= 2
    for done in drawn:
        if "png" in done:
            with Image.open(done["png"]) as image:
                assert image.size[0] >= 480 and image.size[1] > 100
        else:
            assert done["error"].split(": ")[3] in LOAD_TIME


def test_config_mode_on_the_nl_refer_mixture(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for folder in ("videos", "llava_video", "bench_videos"):
        write_mp4(root / folder / "clip.mp4", square_frames(num_frames=4))
    record = nl_refer_record(
        "clip.mp4", "Describe the <ins>red square</ins>.", "It moves right.", frames=(0, 3)
    )
    bench_q = {
        "id": 0,
        "video": "clip.mp4",
        "Question": "Where is the <ins>red square</ins>?",
        "options": ["(A) Left", "(B) Right"],
        "Answer": "(B) Right",
        "type": "Basic Questions",
        "frame_idx": "1",
        "annotation": record["annotation"],
    }
    bench_d = {"id": 0, "video": "clip.mp4", "caption": "A red square.", "annotation": record["annotation"]}
    llava = {k: v for k, v in record.items() if k != "annotation"}
    contents = {"llava_video": llava, "bench_q": bench_q, "bench_d": bench_d}
    for name in NL_REFER_FILES:
        kind = next((k for k in contents if k in name), "nl_refer")
        items = [contents.get(kind, record)] * 3
        if name.endswith("nl_refer_d_2.json"):
            items = [*items, {**record, "video": "gone.mp4"}]
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(json.dumps(items))
    out = tmp_path / "report.json"
    overrides = ["data=nl_refer", f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}"]
    assert main([*overrides, "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    train = {entry["name"]: entry for entry in report["splits"]["train"]}
    assert list(train) == [
        "nl_refer_d_1",
        "nl_refer_d_2",
        "nl_refer_d_3",
        "nl_refer_d_4",
        "nl_refer_q",
        "llava_video",
    ]
    assert train["nl_refer_d_2"]["rejected"] == {"missing_video": 1} and train["nl_refer_d_2"]["kept"] == 3
    assert report["totals"]["train"] == {
        "in_file": 19,
        "sampled": 19,
        "kept": 18,
        "duplicates": 16,
        "rejected": {"missing_video": 1},
    }
    assert [e["kept"] for e in report["splits"]["val"]] == [3]
    assert [e["name"] for e in report["splits"]["bench"]] == [
        "bench_q",
        "bench_q_nlrefer",
        "bench_d",
        "bench_d_nlrefer",
    ]
    assert report["totals"]["bench"]["kept"] == 12 and report["seed"] == 42


def test_demo_dataset_passes_the_doctor(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    ensure_demo(demo, seed=3, num_train=4, num_val=2, num_bench=2, num_images=2, progress=False)
    sources = [
        {"name": path.name.split(".")[0], "path": str(path), "video_root": str(demo)}
        for path in sorted((demo / "annotations").iterdir())
    ]
    expected_formats = {
        "nl_refer_d": "nl_refer",
        "val_nl_refer_d": "nl_refer",
        "nl_refer_q": "nl_refer",
        "llava_video": "llava_video",
        "bench_q": "bench_q",
        "bench_q_nlrefer": "bench_q",
        "bench_d": "bench_d",
        "bench_d_nlrefer": "bench_d",
    }
    mixture = build_mixture(sources, seed=0, cache_dir=tmp_path / "cache", strict=True)
    assert sorted(mixture.source_names) == sorted(expected_formats)
    for name, indices in mixture.source_ranges().items():
        assert len(indices) > 0
        assert {mixture[i].format for i in indices} == {expected_formats[name]}
    shutil.rmtree(demo / "videos")
    rejected = build_mixture(sources, seed=0, cache_dir=tmp_path / "fresh_cache", strict=False)
    reports = {report.name: report for report in rejected.report()}
    assert reports["nl_refer_d"].rejected == {"missing_video": reports["nl_refer_d"].in_file}


def test_file_and_overrides_do_not_mix(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text("[]")
    with pytest.raises(SystemExit, match="one annotation file, or give Hydra overrides"):
        main([str(path), "data=demo"])
