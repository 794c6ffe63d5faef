"""Hugging Face export: stock classes load the folder, generate from raw video, hold the weights."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from module_fixtures import cpu_trainer, loader, make_batch, tiny_module
from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
from transformers.video_utils import VideoMetadata

from swim.model.backbone import build_processor
from swim.model.export import PROVENANCE_FILE, export_hf, main


def assert_same_weights(model: torch.nn.Module, reference: torch.nn.Module) -> None:
    exported, expected = model.state_dict(), reference.state_dict()
    assert exported.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(exported[name], tensor), name


def raw_video_inputs(processor: Qwen2_5_VLProcessor) -> dict[str, torch.Tensor]:
    """A prompt with a raw 4-frame 60x90 video (not a multiple of 28 px), ready for ``generate``."""
    frames = np.random.default_rng(0).integers(0, 255, (4, 60, 90, 3), dtype=np.uint8)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What is shown?"}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    metadata = VideoMetadata(total_num_frames=4, fps=2.0, frames_indices=[0, 1, 2, 3])
    return processor(
        text=[text], videos=[frames], videos_kwargs={"video_metadata": [metadata]}, return_tensors="pt"
    )


def test_exported_module_loads_with_stock_classes_and_generates(tmp_path):
    module = tiny_module()
    out = export_hf(module, tmp_path / "hf")
    assert out == (tmp_path / "hf").resolve()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # no staging dir left behind

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(out)
    processor = Qwen2_5_VLProcessor.from_pretrained(out)
    assert_same_weights(model, module.model)
    assert processor.video_processor.do_resize and processor.image_processor.do_resize
    assert not build_processor().video_processor.do_resize  # training's processor is unchanged
    assert json.loads((out / PROVENANCE_FILE).read_text())["freeze"] == "tower_and_merger"

    inputs = raw_video_inputs(processor)
    _, patches_h, patches_w = inputs["video_grid_thw"][0].tolist()
    assert patches_h % 2 == 0 and patches_w % 2 == 0  # resized to multiples of 28 px
    prompt = inputs["input_ids"].shape[1]
    settings = {"max_new_tokens": 4, "min_new_tokens": 4, "do_sample": False}
    generated = model.generate(**inputs, **settings)
    assert generated.shape == (1, prompt + 4)
    torch.testing.assert_close(generated, module.model.generate(**inputs, **settings), rtol=0, atol=0)


def test_cli_exports_a_lightning_checkpoint_atomically(tmp_path):
    processor = build_processor()
    module = tiny_module()
    trainer = cpu_trainer(1)
    trainer.fit(module, train_dataloaders=loader([make_batch(processor)]))
    checkpoint = tmp_path / "run.ckpt"
    trainer.save_checkpoint(checkpoint, weights_only=True)
    out = tmp_path / "hf"

    main([str(checkpoint), str(out)])  # the CLI, in process: `python -m swim.model.export CKPT OUT`
    assert_same_weights(Qwen2_5_VLForConditionalGeneration.from_pretrained(out), module.model)
    Qwen2_5_VLProcessor.from_pretrained(out)

    with pytest.raises(FileExistsError, match="overwrite"):
        export_hf(checkpoint, out)
    (out / "stale.txt").write_text("from an earlier export")
    main([str(checkpoint), str(out), "--overwrite"])
    assert not (out / "stale.txt").exists()
    assert_same_weights(Qwen2_5_VLForConditionalGeneration.from_pretrained(out), module.model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "run.ckpt"]


def test_bad_sources_fail_clearly_and_leave_nothing(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_hf(tmp_path / "missing.ckpt", tmp_path / "hf")
    (tmp_path / "notes").mkdir()
    with pytest.raises(FileNotFoundError, match="not a DeepSpeed checkpoint"):
        export_hf(tmp_path / "notes", tmp_path / "hf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes"]


def readme_snippet() -> str:
    """The README's Python example of the export (the one that loads ``exports/swim``)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    (snippet,) = [
        block for block in re.findall(r"```python\n(.*?)```", readme, re.DOTALL) if "exports/swim" in block
    ]
    return snippet


def test_the_readme_generate_call_runs_on_a_demo_video_from_the_export(train_demo, tmp_path, capsys):
    # A checkpoint in a run dir with the run's config, as train.py leaves it.
    run_dir = tmp_path / "run"
    module = tiny_module()
    trainer = cpu_trainer(1)
    trainer.fit(module, train_dataloaders=loader([make_batch(build_processor())]))
    trainer.save_checkpoint(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    video = {"min_pixels": 3136, "max_pixels": 50176, "max_frames": 8}
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"data": {**video, "batch_size": 2}}))
    out = tmp_path / "exports" / "swim"
    main([str(run_dir / "checkpoints" / "last.ckpt"), str(out)])
    saved = json.loads((out / "processor_config.json").read_text())["video_processor"]
    assert saved["size"] == {"shortest_edge": 3136, "longest_edge": 50176}
    assert (saved["num_frames"], saved["do_sample_frames"]) == (8, True)

    clip = train_demo / "videos" / "val_00000.mp4"
    snippet = (
        readme_snippet().replace('"exports/swim"', repr(str(out))).replace('"clip.mp4"', repr(str(clip)))
    )
    capsys.readouterr()
    scope: dict = {}
    exec(compile(snippet, "README.md", "exec"), scope)
    assert isinstance(scope["answer"], str) and capsys.readouterr().out.strip() == scope["answer"].strip()
    frames = scope["frames"]
    # The run's settings, not Qwen's defaults: 8 of the video's frames (4 temporal cells), each at its own
    # size (demo frames are within 4-64 tokens), so the grid is the frame's size in 14 px patches.
    t, h, w = scope["inputs"]["video_grid_thw"][0].tolist()
    assert t == 4 and (h * 14, w * 14) == (round(frames.shape[1] / 28) * 28, round(frames.shape[2] / 28) * 28)
