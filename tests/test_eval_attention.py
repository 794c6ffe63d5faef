"""Grounding, visualize and predict with the tiny model on a generated demo; model loading; heatmaps."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from eval_fixtures import compose_eval, make_demo
from module_fixtures import cpu_trainer, loader, make_batch, tiny_module
from PIL import Image

from swim.data.collate import collate
from swim.data.media import load_video_clip
from swim.data.mixture import build_mixture
from swim.data.sample import SampleBuilder
from swim.eval.attention import capture_maps, prompt_rows
from swim.eval.generate import Prompt, clean_prompt, generate
from swim.eval.heatmaps import LABEL_HEIGHT, LABEL_WIDTH, colorize, outline
from swim.eval.loading import load_model
from swim.eval.results import read_jsonl
from swim.eval.tasks import data_config, run
from swim.metrics.grounding import GroundingMetrics, metric_names, update_from_maps
from swim.model.backbone import BackboneConfig
from swim.model.export import export_hf
from swim.model.probe import AttentionProbe, probe_request

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "Describe the <ins>yellow square</ins> and the <ins>red circle</ins>."


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny SwimModule after 3 SWIM steps, saved as a Lightning checkpoint."""
    module = tiny_module()
    trainer = cpu_trainer(3)
    trainer.fit(module, train_dataloaders=loader([make_batch(module.processor)] * 3))
    path = tmp_path_factory.mktemp("ckpt") / "trained.ckpt"
    trainer.save_checkpoint(path)
    return module, path


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    ours, theirs = a.state_dict(), b.state_dict()
    assert ours.keys() == theirs.keys()
    for key, value in ours.items():
        torch.testing.assert_close(value, theirs[key], rtol=0, atol=0, msg=key)


def test_load_model_from_checkpoint_and_export(trained, tmp_path):
    module, ckpt = trained
    from_ckpt = load_model(str(ckpt), BackboneConfig())
    _same_weights(from_ckpt.model, module.model)
    assert not from_ckpt.model.training
    AttentionProbe(from_ckpt.model, [1, 2, 3]).remove()  # the training probe was removed
    folder = export_hf(module, tmp_path / "hf")
    from_folder = load_model(str(folder), BackboneConfig())
    _same_weights(from_folder.model, module.model)
    assert from_folder.processor.video_processor.do_resize is False
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_model(str(tmp_path / "missing.ckpt"), BackboneConfig())
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        load_model(str(tmp_path), BackboneConfig())


def test_left_padded_batch_generates_what_each_prompt_generates_alone(demo, cache):
    loaded = load_model(None, BackboneConfig())
    data = data_config(compose_eval(demo, cache))
    videos = [demo / "videos" / "val_00000.mp4", demo / "frames" / "bench_00001"]
    prompts = [
        Prompt("a", "What moves?", load_video_clip(str(videos[0]), data)),
        Prompt(
            "b",
            "Describe every shape you can see in the video, one by one.",
            load_video_clip(str(videos[1]), data),
        ),
    ]
    batched = generate(loaded.model, loaded.processor, prompts, max_new_tokens=5)
    alone = [generate(loaded.model, loaded.processor, [p], max_new_tokens=5)[0] for p in prompts]
    assert batched == alone


def test_prompt_rows_point_at_the_tagged_words(demo, cache):
    loaded = load_model(None, BackboneConfig())
    data = data_config(compose_eval(demo, cache))
    clip = load_video_clip(str(demo / "videos" / "val_00000.mp4"), data)
    rows = prompt_rows(loaded.processor, PROMPT, clip, system_prompt=data.system_prompt)
    assert rows.phrases == ["yellow square", "red circle"]
    ids = rows.inputs["input_ids"][0]
    tokenizer = loaded.processor.tokenizer
    for phrase, text in enumerate(rows.phrases):
        tokens = rows.request.row_query[rows.row_phrase == phrase] + 1
        assert tokenizer.decode(ids[tokens]).strip() == text
    probe = AttentionProbe(loaded.model, [1, 3])
    try:
        captured = capture_maps(loaded.model, probe, rows.inputs, rows.request, fusion="product")
    finally:
        probe.remove()
    t, h, w = rows.grid
    assert captured.fused.shape == (rows.request.num_rows, t * h * w)
    torch.testing.assert_close(captured.fused.sum(dim=1), torch.ones(rows.request.num_rows))
    with pytest.raises(ValueError, match="no <ins>"):
        prompt_rows(loaded.processor, "Describe the square.", clip, system_prompt=None)


def test_grounding_task_agrees_with_grounding_metrics_and_resumes(demo, cache, tmp_path):
    source = f"task.sources=[{{name: val, path: {demo}/annotations/val_nl_refer_d.json, video_root: {demo}}}]"
    cfg = compose_eval(demo, cache, "task=grounding", source)
    report = run(cfg, tmp_path)
    rows = read_jsonl(tmp_path / "grounding" / "val.jsonl")
    assert len(rows) == 2 and all(row["pairs"] > 0 for row in rows)
    assert report.metrics["val/grounding/samples"] == 2

    loaded = load_model(None, BackboneConfig())
    builder = SampleBuilder(loaded.processor, data_config(cfg, pixel_masks=True))
    mixture = build_mixture(list(cfg.task.sources), seed=0, cache_dir=cache, strict=True)
    batch = collate([builder.build(mixture[i]) for i in range(2)], loaded.processor.tokenizer.pad_token_id)
    probe = AttentionProbe(loaded.model, [1, 2, 3])
    try:
        captured = capture_maps(
            loaded.model, probe, batch.model_inputs(), probe_request(batch.supervision), fusion="product"
        )
    finally:
        probe.remove()
    # The names training logs as val/<name> (tests/test_module.py holds the other side).
    written = {key.rsplit("/", 1)[1] for key in report.metrics if key.startswith("val/grounding/fused/")}
    assert set(metric_names()) <= written
    for name, maps in {"fused": captured.fused, "layer_2": captured.layers[2]}.items():
        metric = GroundingMetrics()
        update_from_maps(metric, maps, batch.supervision)
        expected = metric.compute()
        for key in ("iou50", "pointing_game", "roc_auc", "average_precision", "attn_in_mask"):
            got = report.metrics[f"val/grounding/{name}/{key}"]
            assert got == pytest.approx(float(expected[key]), abs=1e-5), (name, key)
            assert 0.0 <= got <= 1.0

    before = (tmp_path / "grounding" / "val.jsonl").read_text()
    again = run(cfg, tmp_path)
    assert (tmp_path / "grounding" / "val.jsonl").read_text() == before
    assert (again.metrics["val/grounding/resumed"], again.metrics["val/grounding/scored_now"]) == (2, 0)
    now = {key: value for key, value in again.metrics.items() if not key.endswith(("_now", "resumed"))}
    assert now == {
        key: value for key, value in report.metrics.items() if not key.endswith(("_now", "resumed"))
    }


def test_visualize_draws_before_and_after_side_by_side(demo, cache, trained, tmp_path):
    _, ckpt = trained
    source = f"task.sources=[{{name: val, path: {demo}/annotations/val_nl_refer_d.json, video_root: {demo}}}]"
    cfg = compose_eval(
        demo, cache, "task=visualize", source, f"ckpt={ckpt}", "task.num_samples=1", "task.before=backbone"
    )
    report = run(cfg, tmp_path)
    pngs = sorted((tmp_path / "heatmaps").glob("*.png"))
    assert report.metrics["visualize/figures"] == len(pngs) >= 1
    builder = SampleBuilder(load_model(None, BackboneConfig()).processor, data_config(cfg))
    mixture = build_mixture(list(cfg.task.sources), seed=0, cache_dir=cache, strict=True)
    frames = builder.load_visual(mixture[0]).frames
    count, height, width, _ = frames.shape
    image = np.asarray(Image.open(pngs[0]).convert("RGB"))
    assert image.shape == (2 * LABEL_HEIGHT + 3 * height, LABEL_WIDTH + count * width, 3)
    panels = [
        image[2 * LABEL_HEIGHT + r * height : 2 * LABEL_HEIGHT + (r + 1) * height, LABEL_WIDTH:]
        for r in range(3)
    ]
    np.testing.assert_array_equal(panels[0][..., :], _frames_row(frames, panels[0]))
    assert not np.array_equal(panels[1], panels[2])  # trained weights attend differently


def _frames_row(frames: np.ndarray, drawn: np.ndarray) -> np.ndarray:
    """The frames side by side, keeping the drawn outline pixels (pure green) as drawn."""
    row = np.concatenate(list(frames), axis=1)
    green = np.all(drawn == (0, 255, 0), axis=-1)
    assert green.any()
    row[green] = (0, 255, 0)
    return row


def test_predict_cli_answers_and_writes_heatmaps(demo, trained, tmp_path):
    _, ckpt = trained
    video = demo / "videos" / "val_00000.mp4"
    out = tmp_path / "heatmaps"
    command = [
        sys.executable,
        "evaluate.py",
        "task=predict",
        f"ckpt={ckpt}",
        f"input.video={video}",
        f"input.prompt='{PROMPT}'",
        f"input.heatmaps={out}",
        "task.max_new_tokens=6",
        f"hydra.run.dir={tmp_path / 'run'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "run" / "prediction.json").read_text())
    assert result["prompt"] == PROMPT
    loaded = load_model(str(ckpt), BackboneConfig())
    data = data_config(compose_eval(demo, tmp_path / "cache"))
    clip = load_video_clip(str(video), data)
    expected = generate(
        loaded.model,
        loaded.processor,
        [Prompt("x", clean_prompt(PROMPT), clip)],
        max_new_tokens=6,
        system_prompt=data.system_prompt,
    )
    assert result["answer"] == expected[0]
    assert [Path(p).name for p in result["heatmaps"]] == [
        "phrase0_yellow_square.png",
        "phrase1_red_circle.png",
    ]
    image = Image.open(result["heatmaps"][0])
    assert image.size == (
        LABEL_WIDTH + clip.frames.shape[0] * clip.frames.shape[2],
        2 * LABEL_HEIGHT + 5 * clip.frames.shape[1],
    )


def test_outline_and_colours():
    mask = np.zeros((6, 6), dtype=bool)
    mask[1:5, 1:5] = True
    edge = outline(mask)
    assert edge.sum() == 12 and not edge[2:4, 2:4].any() and not edge[0].any()
    np.testing.assert_array_equal(colorize(np.array([[0.0, 1.0]])), [[[0, 0, 4], [252, 255, 164]]])
