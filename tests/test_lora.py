"""LoRA through peft: probe parity on the wrapped model, adapter-only optimiser, checkpoints and the
merged export, QLoRA's CPU error, and ``train.py model.peft=lora`` end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from module_fixtures import cpu_trainer, loader, make_batch, tiny_module
from peft.tuners.lora import LoraLayer
from test_probe import _expected_maps, _inputs, _supervision
from test_train import train_in_process
from train_fixtures import FAST, compose_train, demo_overrides
from transformers import Qwen2_5_VLForConditionalGeneration

from swim.model.backbone import BackboneConfig, build_backbone
from swim.model.export import PROVENANCE_FILE, export_hf
from swim.model.lora import PeftSettings, add_adapters, peft_settings
from swim.model.module import SwimModule
from swim.model.probe import AttentionProbe, probe_request

ALL_LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def randomise_adapters(model: torch.nn.Module, seed: int = 0, scale: float = 0.2) -> None:
    """Seeded random adapter weights (``lora_B`` is zero at init: LoRA starts as the identity)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * scale)


def test_probe_matches_eager_attention_weights_through_lora_projections():
    settings = PeftSettings(target_modules=ALL_LINEARS, dropout=0.0)
    model, processor = build_backbone(BackboneConfig())
    eager, _ = build_backbone(BackboneConfig(attn_implementation="eager"))
    inputs = _inputs(processor, "right")
    with torch.no_grad():
        stock = eager(**inputs, output_attentions=True)
    for backbone in (model, eager):
        add_adapters(backbone, settings)
        randomise_adapters(backbone)
        backbone.eval()
    q_proj = model.model.language_model.layers[0].self_attn.q_proj
    assert isinstance(q_proj, LoraLayer)
    supervision = _supervision(inputs)
    request = probe_request(supervision, query="predicting")
    with torch.no_grad():
        reference = eager(**inputs, output_attentions=True)
    probe = AttentionProbe(model, [0, 2, 3])
    try:
        with torch.no_grad(), probe.capture(request) as maps:
            model(**inputs)
    finally:
        probe.remove()
    for layer in (0, 2, 3):
        expected = _expected_maps(reference.attentions, layer, request)
        torch.testing.assert_close(maps[layer], expected, atol=1e-5, rtol=0)
        # The adapters change the attention: parity is not the stock model's maps by accident.
        unadapted = _expected_maps(stock.attentions, layer, request)
        assert float((expected - unadapted).abs().max()) > 1e-3


def _adapter_module(**peft: object) -> SwimModule:
    return tiny_module(peft={"rank": 4, "dropout": 0.0, **peft})


def test_only_adapters_and_modules_to_save_train_and_reach_the_optimiser(tmp_path: Path):
    module = _adapter_module(modules_to_save=["lm_head"])
    processor = module.processor
    trainable = {name for name, param in module.model.named_parameters() if param.requires_grad}
    assert trainable and all("lora_" in name or "modules_to_save" in name for name in trainable)
    assert any("lm_head.modules_to_save" in name for name in trainable)
    assert not any(name.startswith("model.visual") for name in trainable)
    before = {name: param.detach().clone() for name, param in module.model.named_parameters()}

    trainer = cpu_trainer(max_steps=2)
    trainer.fit(module, loader([make_batch(processor), make_batch(processor, video=False, supervised=False)]))
    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    named = dict(module.model.named_parameters())
    assert optimised == {id(named[name]) for name in trainable}
    for name, param in named.items():
        changed = not torch.equal(param.detach(), before[name])
        if name not in trainable:
            assert not changed, f"frozen {name} moved"
        elif "lora_B" in name or "modules_to_save" in name:
            # Step 1 is the warmup at lr 0; step 2 moves lora_B (lora_A's gradient is 0 while B is 0).
            assert changed, f"trainable {name} did not move"

    # The checkpoint holds the adapters (and the frozen base they sit on).
    path = tmp_path / "lora.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, map_location="cpu", weights_only=False)
    assert state["hyper_parameters"]["peft"]["rank"] == 4
    adapter_keys = [key for key in state["state_dict"] if "lora_A" in key or "lora_B" in key]
    assert len(adapter_keys) == 2 * 4 * len(module.model.model.language_model.layers)
    reloaded = SwimModule.load_from_checkpoint(path, map_location="cpu", weights_only=False)
    for key in adapter_keys:
        assert torch.equal(reloaded.state_dict()[key], state["state_dict"][key]), key


def _logits(model: torch.nn.Module, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch.model_inputs(), use_cache=False).logits


@pytest.mark.parametrize("source", ["module", "checkpoint"])
def test_export_merges_adapters_into_a_stock_checkpoint(tmp_path: Path, source: str):
    """The merged folder loads into the stock class with no missing key; logits match to 1e-5 (fp32).

    Merging changes only the order of float32 sums (``x (W + s B A)^T`` vs ``x W^T + s (x A^T) B^T``):
    about 1e-6 on logits of magnitude ~2 here; the adapters themselves move logits by ~1.
    """
    module = _adapter_module(target_modules=ALL_LINEARS, modules_to_save=["lm_head"])
    randomise_adapters(module.model, scale=0.02)
    with torch.no_grad():
        module.model.lm_head.modules_to_save["default"].weight.mul_(1.5)
    batch = make_batch(module.processor)
    if source == "checkpoint":
        path = tmp_path / "lora.ckpt"
        trainer = cpu_trainer(max_steps=2)  # the first step is the 1-step warmup at lr 0
        trainer.fit(module, loader([batch, batch]))
        trainer.save_checkpoint(path)
    unmerged = _logits(module.model.eval(), batch)
    if source == "checkpoint":
        target = export_hf(path, tmp_path / "hf")
    else:
        target = export_hf(module, tmp_path / "hf")
        # The module in memory keeps its adapters.
        assert isinstance(module.model.model.language_model.layers[0].self_attn.q_proj, LoraLayer)
    assert not (target / "adapter_config.json").exists()
    stock, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(target, output_loading_info=True)
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    assert not any("lora" in name or "base_layer" in name for name in stock.state_dict())
    merged = _logits(stock.eval(), batch)
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=0)
    assert float((unmerged - _logits(tiny_module().model.eval(), batch)).abs().max()) > 1e-3
    provenance = (target / PROVENANCE_FILE).read_text()
    assert '"rank": 4' in provenance


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error is for machines without CUDA")
def test_qlora_refuses_a_machine_without_cuda():
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        peft_settings("qlora")
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        SwimModule(backbone={"kind": "tiny"}, peft={"method": "qlora"})


def test_peft_config_errors_name_the_field():
    with pytest.raises(ValueError, match=r"model.peft='loraa': expected null, a mapping or a preset"):
        peft_settings("loraa")
    with pytest.raises(ValueError, match=r"model.peft.target_modules=.*unknown: \['qkv'\]"):
        PeftSettings(target_modules=["q_proj", "qkv"])
    with pytest.raises(ValueError, match=r"model.peft.rank=0"):
        PeftSettings(rank=0)
    with pytest.raises(ValueError, match=r"model.peft: unknown keys \['r'\]"):
        peft_settings({"r": 8})
    with pytest.raises(ValueError, match=r"model.freeze='none' with model.peft set"):
        SwimModule(backbone={"kind": "tiny"}, freeze="none", peft="lora")
    assert peft_settings("lora") == PeftSettings()


def test_peft_override_spellings_compose(tmp_path: Path):
    assert compose_train([], tmp_path).model.peft is None
    assert compose_train(["model.peft=lora"], tmp_path).model.peft == "lora"
    group = compose_train(["model/peft=lora", "model.peft.rank=32"], tmp_path).model.peft
    assert group.rank == 32 and group.method == "lora"
    recipe = compose_train(["experiment=swim_7b_lora"], tmp_path)
    assert recipe.model.peft.method == "lora" and recipe.model.backbone.kind == "pretrained"
    assert recipe.model.gradient_checkpointing and recipe.trainer.devices == 1


def test_train_py_runs_the_demo_with_lora(train_demo: Path, records_cache: Path, tmp_path: Path):
    run_dir = tmp_path / "run"
    overrides = [*FAST, *demo_overrides(train_demo, records_cache), "logger=csv", "model.peft=lora"]
    report = train_in_process(overrides, run_dir)
    assert report["status"] == "finished" and report["global_step"] == 2
    params = report["params"]
    assert 0 < params["trainable"] < params["total"] / 100
    assert "train/attn_loss" in report["fit"]
    target = export_hf(report["checkpoints"]["last"], tmp_path / "hf")
    assert Qwen2_5_VLForConditionalGeneration.from_pretrained(target) is not None
