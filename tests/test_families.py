"""Model families behind one adapter: the registry, each family's spec, its dummy vision pass
(DeepStack included), the demo at its geometry, and a short demo training run whose export stock
transformers loads and generates with.

Probe parity, armed/disarmed hidden states and the gradient-checkpointing parity run per family in
``tests/test_probe.py``; sample building per family in ``tests/test_sample.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from train_fixtures import FAST, compose_train, demo_overrides
from transformers.video_utils import VideoMetadata

from swim.data.demo import demo_folder, generate_demo
from swim.data.demo.sample import FRAME_SIZES, frame_sizes, sample_scene
from swim.model.backbone import BackboneConfig, build_backbone
from swim.model.export import export_hf
from swim.model.families import FAMILIES, family_of, get_family
from swim.model.optim import apply_freeze
from swim.model.step import visual_anchor

NAMES = ["qwen2_5_vl", "qwen2_vl", "qwen3_vl"]


def test_registry_specs_and_errors() -> None:
    assert sorted(FAMILIES) == sorted(NAMES)
    assert [get_family(n).spec.token_px for n in NAMES] == [28, 28, 32]
    assert [get_family(n).spec.layout for n in NAMES] == ["contiguous", "contiguous", "timestamped"]
    with pytest.raises(ValueError, match=r"model\.backbone\.family='llava'"):
        BackboneConfig(family="llava")
    with pytest.raises(ValueError, match=r"no model family for config\.model_type"):
        family_of(torch.nn.Linear(1, 1))
    processor = get_family("qwen3_vl").build_processor()
    with pytest.raises(ValueError, match=r"disagree with the model family's visual spec \(14, 2, 2\)"):
        get_family("qwen2_5_vl").spec.check_processor(processor)


@pytest.mark.parametrize("family", NAMES)
def test_dummy_visual_pass_runs_every_tower_output(family: str) -> None:
    """A rank without video still runs (and differentiates) every tower module, DeepStack mergers too."""
    model, _ = build_backbone(BackboneConfig(family=family))
    assert family_of(model).name == family
    apply_freeze(model, "none")
    anchor = visual_anchor(model, torch.device("cpu"))
    assert anchor.dtype == torch.float32 and float(anchor.detach()) == 0.0
    anchor.backward()
    missing = [name for name, p in model.model.visual.named_parameters() if p.grad is None]
    assert not missing, f"tower parameters without a gradient: {missing}"
    assert all(not bool(p.grad.any()) for p in model.model.visual.parameters())
    if family == "qwen3_vl":
        assert len(model.model.visual.deepstack_merger_list) == 2  # min(3, vision_depth) by default
        apply_freeze(model, "tower")
        trainable = {
            n.split(".")[2] for n, p in model.named_parameters() if p.requires_grad and ".visual." in n
        }
        assert trainable == {"merger", "deepstack_merger_list"}


def test_demo_frames_and_shapes_follow_the_token_side() -> None:
    assert frame_sizes(28) == FRAME_SIZES
    on_grid = [(w, h) for w, h in FRAME_SIZES if w % 28 == 0 and h % 28 == 0]
    assert all(w % 32 == 0 and h % 32 == 0 for w, h in frame_sizes(32)[: len(on_grid)])
    assert sample_scene("a", 5).spec == sample_scene("a", 5, token_px=28).spec
    scene = sample_scene("a", 5, token_px=32).spec
    assert (scene.width, scene.height) in frame_sizes(32)
    assert min(o.size for o in scene.objects) >= 32
    assert demo_folder("/c/demo", 28) == "/c/demo" and demo_folder("/c/demo", 32) == "/c/demo_32px"


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_demo_training_run_and_stock_export(
    family: str, records_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """``model=tiny_<family>`` trains two steps on a demo drawn at its geometry; the export loads
    with the family's stock classes and generates from a raw video."""
    from train import train

    adapter = get_family(family)
    demo = tmp_path_factory.mktemp(f"demo_{family}")
    px = adapter.spec.token_px
    generate_demo(
        demo, seed=0, num_train=4, num_val=2, num_bench=1, num_images=1, token_px=px, progress=False
    )
    run_dir = tmp_path_factory.mktemp(f"run_{family}")
    overrides = [*FAST, *demo_overrides(demo, records_cache), "logger=csv", f"model=tiny_{family}"]
    report = train(compose_train(overrides, run_dir))
    assert report["status"] == "finished" and report["global_step"] == 2
    assert "train/attn_loss" in report["fit"]
    assert 0.0 <= report["validate"]["val/pointing_game"] <= 1.0

    out = export_hf(report["checkpoints"]["last"], run_dir / "hf")
    model = adapter.model_class.from_pretrained(out)
    processor = adapter.processor_class.from_pretrained(out)
    assert model.config.model_type == adapter.model_type and processor.video_processor.do_resize
    frames = np.random.default_rng(0).integers(0, 255, (4, 60, 90, 3), dtype=np.uint8)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What is shown?"}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    metadata = VideoMetadata(total_num_frames=4, fps=2.0, frames_indices=[0, 1, 2, 3])
    inputs = processor(
        text=[text], videos=[frames], videos_kwargs={"video_metadata": [metadata]}, return_tensors="pt"
    )
    _, patches_h, patches_w = inputs["video_grid_thw"][0].tolist()
    assert (patches_h * adapter.spec.patch_size) % px == 0 and (patches_w * adapter.spec.patch_size) % px == 0
    generated = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert generated.shape == (1, inputs["input_ids"].shape[1] + 3)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_evaluate_tasks_run_on_each_family(
    family: str, eval_demo: Path, eval_cache: Path, tmp_path: Path
) -> None:
    """``evaluate.py``'s grounding and bench_q tasks on ``model=tiny_<family>`` (the 28 px eval demo's
    frames are resized to the family's token side by the pipeline)."""
    from eval_fixtures import compose_eval

    from swim.eval.results import read_jsonl
    from swim.eval.tasks import run

    model = f"model=tiny_{family}"
    path = eval_demo / "annotations" / "val_nl_refer_d.json"
    val = f"task.sources=[{{name: val, path: {path}, video_root: {eval_demo}}}]"
    report = run(compose_eval(eval_demo, eval_cache, "task=grounding", val, model), tmp_path / "grounding")
    rows = read_jsonl(tmp_path / "grounding" / "grounding" / "val.jsonl")
    assert len(rows) == 2 and all(row["pairs"] > 0 for row in rows)
    assert report.metrics["val/grounding/samples"] == 2
    bench = ["task=bench_q", "generation.batch_size=2", "task.max_new_tokens=4", "limit=2", model]
    report = run(compose_eval(eval_demo, eval_cache, *bench), tmp_path / "bench")
    assert len(read_jsonl(tmp_path / "bench" / "bench_q" / "bench_q.jsonl")) == 2
