"""The data doctor per model family: ``--family`` / ``model.backbone.family`` pick the processor and
geometry of the ``--deep`` samples, and config mode checks the demo drawn at the family's token side."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from swim.data.demo import generate_demo
from swim.data.inspect import main, plan_from_config
from swim.data.mixture import build_mixture
from swim.data.sample import SampleBuilder
from swim.model.families import FAMILIES, get_family

SIZES = {"num_train": 3, "num_val": 1, "num_bench": 1, "num_images": 1}


@pytest.fixture(scope="module")
def demos(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """Small demos drawn at 28 px and at 32 px tokens."""
    out = {}
    for px in (28, 32):
        out[px] = tmp_path_factory.mktemp(f"demo_{px}px")
        generate_demo(out[px], seed=0, token_px=px, progress=False, **SIZES)
    return out


def deep_report(demo: Path, family: str, tmp_path: Path) -> dict:
    """``python -m swim.data.inspect``'s JSON report of the demo's captions, ``--deep --family FAMILY``."""
    out = tmp_path / "report.json"
    annotation = demo / "annotations" / "nl_refer_d.json"
    args = [str(annotation), "--video-root", str(demo), "--cache-dir", str(tmp_path / "cache")]
    args += ["--deep", "--family", family]
    assert main([*args, "--json", str(out)]) == 0
    return json.loads(out.read_text())


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_deep_check_builds_each_familys_samples_on_its_demo(
    family: str, demos: dict[int, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = get_family(family).spec
    report = deep_report(demos[spec.token_px], family, tmp_path)
    assert report["family"] == {"name": family, "token_px": spec.token_px, "layout": spec.layout}
    (entry,) = report["splits"]["file"]
    assert entry["load"]["ok"] == entry["load"]["checked"] == entry["kept"] == SIZES["num_train"]
    assert entry["load"]["failed"] == {} and entry["load"]["counters"]["tags/kept"] > 0
    assert f"samples built as {family} builds them ({spec.token_px} px tokens" in capsys.readouterr().out


def test_qwen3_vl_check_of_the_28px_demo_loads_resized(demos: dict[int, Path], tmp_path: Path) -> None:
    """The 28 px demo is no failure for Qwen3-VL: the pipeline resizes frames to 32 px multiples,
    as training does (its shapes are drawn off the token grid, which no check can see)."""
    report = deep_report(demos[28], "qwen3_vl", tmp_path)
    (entry,) = report["splits"]["file"]
    assert report["family"]["token_px"] == 32
    assert entry["load"]["ok"] == entry["load"]["checked"] == SIZES["num_train"]
    assert entry["load"]["failed"] == {}
    annotation = demos[28] / "annotations" / "nl_refer_d.json"
    source = {"name": "d", "path": str(annotation), "video_root": str(demos[28])}
    record = build_mixture([source], seed=0, cache_dir=tmp_path / "cache", strict=True)[0]
    adapter = get_family("qwen3_vl")
    builder = SampleBuilder(adapter.build_processor(), spec=adapter.spec)
    sample, shown = builder.build(record), builder.load_visual(record)
    assert shown.frames is not None
    _, height, width, _ = shown.frames.shape
    assert height % 32 == 0 and width % 32 == 0 and sample.grid[1:] == (height // 32, width // 32)


def test_config_mode_follows_the_family_to_its_demo(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    for plan in (
        plan_from_config(["model=tiny_qwen3_vl", f"data.demo_dir={demo}"]),
        plan_from_config([f"data.demo_dir={demo}"], family="qwen3_vl"),
    ):
        assert plan.family == "qwen3_vl" and plan.demo_dir == f"{demo}_32px"
        paths = [source.path for sources in plan.sources.values() for source in sources]
        assert paths and all(path.startswith(f"{demo}_32px/annotations/") for path in paths)
    default = plan_from_config([f"data.demo_dir={demo}"])
    assert default.family == "qwen2_5_vl" and default.demo_dir == str(demo)


def test_an_unknown_family_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "a.json"
    path.write_text("[]")
    assert main([str(path), "--family", "qwen9"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "qwen9" in line and "qwen3_vl" in line


@pytest.mark.slow
def test_config_mode_deep_check_of_the_qwen3_vl_demo(tmp_path: Path) -> None:
    """``python -m swim.data.inspect model=tiny_qwen3_vl --deep``: the demo is generated at 32 px
    in ``<demo_dir>_32px`` and every checked sample loads."""
    demo, out = tmp_path / "demo", tmp_path / "report.json"
    overrides = ["model=tiny_qwen3_vl", f"data.demo_dir={demo}", f"data.cache_dir={tmp_path / 'cache'}"]
    assert main([*overrides, "--deep", "--limit", "2", "--json", str(out)]) == 0
    manifest = json.loads((tmp_path / "demo_32px" / "manifest.json").read_text())
    assert manifest["token_px"] == 32 and not demo.exists()
    report = json.loads(out.read_text())
    assert report["family"]["name"] == "qwen3_vl"
    for totals in report["totals"].values():
        assert totals["load"]["ok"] == totals["load"]["checked"] > 0 and totals["load"]["failed"] == {}
