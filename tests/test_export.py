"""Hugging Face export: stock classes load the folder, generate from raw video, hold the weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
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
