"""SwimModule: real tiny Qwen2.5-VL, real processor, real Lightning trainers on the CPU."""

from __future__ import annotations

import math
from pathlib import Path

import hydra
import pytest
import torch
from lightning.pytorch import Callback, Trainer
from module_fixtures import cpu_trainer, labelled_next_tokens, loader, make_batch, tiny_module
from omegaconf import OmegaConf

from swim.data.batch import SwimBatch
from swim.metrics.grounding import metric_names
from swim.model.backbone import build_processor
from swim.model.module import SwimModule
from swim.model.optim import (
    OptimizerConfig,
    SchedulerConfig,
    apply_freeze,
    build_scheduler,
    param_groups,
    parameter_counts,
)
from swim.model.step import labelled_cross_entropy, zero_weighted_loss

CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.fixture(scope="module")
def processor():
    return build_processor()


@pytest.fixture(scope="module")
def batches(processor) -> dict[str, SwimBatch]:
    return {
        "supervised": make_batch(processor, sample_id="sup"),
        "video": make_batch(processor, supervised=False, sample_id="video"),
        "text": make_batch(processor, video=False, supervised=False, sample_id="text"),
    }


class StepRecorder(Callback):
    """Per training batch: the tower's forward calls, the LM head's input rows, and the logged metrics."""

    def __init__(self, module: SwimModule) -> None:
        self.tower_calls: list[int] = []
        self.head_rows: list[list[int]] = []
        self.metrics: list[dict[str, float]] = []
        self.outputs: list[object] = []
        module.model.model.visual.register_forward_hook(lambda *_: self._count_tower())
        module.model.lm_head.register_forward_hook(
            lambda _m, args, _o: self.head_rows[-1].append(args[0].shape)
        )

    def _count_tower(self) -> None:
        self.tower_calls[-1] += 1

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.tower_calls.append(0)
        self.head_rows.append([])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.outputs.append(outputs)
        self.metrics.append({k: float(v) for k, v in trainer.callback_metrics.items()})


def snapshot(module: SwimModule) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.model.named_parameters()}


def test_training_steps_freeze_tower_train_lm_and_log(batches):
    module = tiny_module()
    before = snapshot(module)
    recorder = StepRecorder(module)
    trainer = cpu_trainer(3, [recorder])
    items = [batches["supervised"], batches["text"], batches["supervised"]]
    trainer.fit(module, train_dataloaders=loader(items))

    assert trainer.global_step == 3
    after = dict(module.model.named_parameters())
    tower = [name for name in after if name.startswith("model.visual.")]
    assert tower and all(not after[name].requires_grad for name in tower)
    assert all(torch.equal(before[name], after[name]) for name in tower)
    optimizer = trainer.optimizers[0]
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not optimized & {id(after[name]) for name in tower}
    assert {id(p) for p in optimizer.state} == optimized
    for name in ("model.language_model.layers.0.self_attn.q_proj.weight", "lm_head.weight"):
        assert not torch.equal(before[name], after[name]), f"{name} did not move"

    for step, metrics in enumerate(recorder.metrics):
        assert math.isfinite(metrics["train/loss"]), step
        assert "train/lr" in metrics
    for step in (0, 2):
        assert recorder.metrics[step]["train/attn_loss"] > 0
        assert recorder.metrics[step]["train/attn_pairs"] == 4  # 2 rows x 2 annotated cells
        for key in ("layer_1", "layer_2", "layer_3", "fused"):
            assert 0 <= recorder.metrics[step][f"train/attn_in_mask/{key}"] <= 1
    assert recorder.metrics[-1]["data/tag_dropped/no_instance"] == 2
    assert float(trainer.callback_metrics["train/tokens_per_s"]) > 0

    # The tower ran on every step, the text-only one included (the zero-weighted dummy video).
    assert recorder.tower_calls == [1, 1, 1]
    # The LM head saw only the positions whose next token is labelled.
    for rows, batch in zip(recorder.head_rows, items, strict=True):
        assert [shape[0] for shape in rows] == [labelled_next_tokens(batch)]


def test_labelled_cross_entropy_matches_full_logits(batches):
    module = tiny_module()
    batch = batches["supervised"]
    with torch.no_grad():
        reference = module.model(**batch.model_inputs(), labels=batch.labels).loss
        hidden = module.model.model(**batch.model_inputs()).last_hidden_state
        loss, count = labelled_cross_entropy(hidden, batch.labels, module.model.lm_head)
    assert count == labelled_next_tokens(batch)
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-5)


def test_nonfinite_loss_skips_step_and_is_counted(batches):
    module = tiny_module()
    with torch.no_grad():
        module.model.lm_head.weight[:, 0] = float("inf")  # every logit non-finite
    before = snapshot(module)
    recorder = StepRecorder(module)
    trainer = cpu_trainer(2, [recorder])
    trainer.fit(module, train_dataloaders=loader([batches["supervised"], batches["text"]]))

    assert module.nonfinite_skips == 2
    assert recorder.metrics[-1]["train/nonfinite_skips"] == 2
    assert all(not output for output in recorder.outputs)  # no loss reached backward
    assert not trainer.optimizers[0].state
    after = snapshot(module)
    assert all(torch.equal(before[name], after[name]) for name in before if "lm_head" not in name)


def test_zero_weighted_loss_gives_zero_gradients(batches):
    module = tiny_module()
    step = module.forward_losses(batches["supervised"], capture=True)
    step.mask_loss = step.mask_loss * float("nan")
    zero_weighted_loss(step).backward()
    grads = [p.grad for p in module.model.parameters() if p.requires_grad and p.grad is not None]
    assert grads
    assert all(torch.count_nonzero(g) == 0 for g in grads)


def test_mask_loss_gradients_survive_gradient_checkpointing(batches):
    def mask_grads(checkpointing: bool) -> dict[str, torch.Tensor]:
        module = tiny_module(gradient_checkpointing=checkpointing)
        module.train()
        module.forward_losses(batches["supervised"], capture=True).mask_loss.backward()
        return {n: p.grad.clone() for n, p in module.model.named_parameters() if p.grad is not None}

    plain, checkpointed = mask_grads(False), mask_grads(True)
    name = "model.language_model.layers.1.self_attn.q_proj.weight"
    assert plain[name].abs().sum() > 0
    assert plain.keys() == checkpointed.keys()
    for key in plain:
        torch.testing.assert_close(checkpointed[key], plain[key], rtol=1e-4, atol=1e-6)


def test_validation_logs_grounding_metrics_and_keeps_heatmaps(batches, processor):
    module = tiny_module()
    trainer = cpu_trainer(1)
    val = loader([batches["supervised"], batches["text"], batches["video"]])
    trainer.validate(module, dataloaders=val, verbose=False)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    for key in ("val/loss", "val/text_loss", "val/attn_loss"):
        assert math.isfinite(metrics[key])
    for key in ("pointing_game", "iou50", "roc_auc", "attn_in_mask", "dice", "average_precision"):
        assert 0 <= metrics[f"val/{key}"] <= 1
        for layer in (1, 2, 3):
            assert 0 <= metrics[f"val/layer_{layer}/{key}"] <= 1
    assert metrics["val/num_pairs"] == 4
    # The names evaluation writes (swim.metrics.grounding.metric_names), under val/ and val/layer_<k>/.
    fused = {key.removeprefix("val/") for key in metrics if key.count("/") == 1}
    assert fused - {"loss", "text_loss", "attn_loss", "num_pairs", "num_samples", "num_empty_masks"} == set(
        metric_names()
    )

    assert [m.sample_id for m in module.last_val_maps] == ["sup"]
    sample = module.last_val_maps[0]
    assert sample.grid == (2, 3, 3)
    assert [processor.tokenizer.decode([row.token_id]) for row in sample.rows] == [" red", " square"]
    assert [row.phrase for row in sample.rows] == [0, 0]
    for row in sample.rows:
        assert row.fused.shape == (2, 3, 3) and row.fused.device.type == "cpu"
        assert not row.fused.requires_grad
        torch.testing.assert_close(row.fused.sum(), torch.tensor(1.0))
        assert row.cell_masks[:, 1, 1].eq(1).all() and row.cell_valid.all()

    # The heatmap set stays fixed: a later validation keeps the same sample even if others come first.
    other = make_batch(processor, sample_id="other")
    trainer.validate(module, dataloaders=loader([other, batches["supervised"]]), verbose=False)
    assert [m.sample_id for m in module.last_val_maps] == ["sup"]


def test_freeze_modes_and_optimizer_groups():
    module = tiny_module()
    model = module.model
    counts = module.parameter_counts()
    tower = sum(p.numel() for p in model.model.visual.parameters())
    merger = sum(p.numel() for p in model.model.visual.merger.parameters())
    assert counts["frozen"] == tower and counts["total"] == counts["trainable"] + tower

    apply_freeze(model, "tower")
    assert parameter_counts(model)["frozen"] == tower - merger
    apply_freeze(model, "none")
    assert parameter_counts(model)["frozen"] == 0
    with pytest.raises(ValueError, match=r"model\.freeze='bogus'"):
        apply_freeze(model, "bogus")
    with pytest.raises(ValueError, match=r"model\.freeze"):
        SwimModule(backbone={"kind": "tiny"}, loss={"layers": [1]}, freeze="bogus")

    apply_freeze(model, "tower_and_merger")
    decay, no_decay = param_groups(model, weight_decay=0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    grouped = sum(p.numel() for group in (decay, no_decay) for p in group["params"])
    assert grouped == counts["trainable"]


def test_schedule_warmup_in_steps_or_ratio():
    param = torch.nn.Parameter(torch.zeros(2, 2))
    optimizer = torch.optim.AdamW([param], lr=1.0)

    scheduler = build_scheduler(optimizer, SchedulerConfig(name="cosine", warmup_steps=2), total_steps=10)
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == 0.0 and lrs[1] == 0.5 and lrs[2] == 1.0
    assert lrs[3] > lrs[6] > lrs[9] > 0

    assert SchedulerConfig(warmup_ratio=0.1).num_warmup_steps(95) == 10
    with pytest.raises(ValueError, match="estimates inf optimiser steps"):
        build_scheduler(optimizer, SchedulerConfig(), total_steps=float("inf"))
    with pytest.raises(ValueError, match=r"model\.optimizer\.betas"):
        OptimizerConfig(betas=(0.9, 1.5))


def test_hydra_instantiates_module_from_model_and_loss_configs():
    for name in ("tiny", "qwen2_5_vl_7b"):
        cfg = OmegaConf.create(
            {
                "model": OmegaConf.load(CONF / "model" / f"{name}.yaml"),
                "loss": OmegaConf.load(CONF / "loss" / "swim.yaml"),
            }
        )
        module = hydra.utils.instantiate(cfg.model, loss=cfg.loss, _recursive_=False)
        assert isinstance(module, SwimModule)
        assert module.model is None  # built in configure_model
        assert module.loss_cfg.layers == list(cfg.model.supervised_layers)
        assert module.optimizer_cfg.lr == cfg.model.optimizer.lr
        assert module.freeze == "tower_and_merger"
    assert module.backbone_cfg.kind == "pretrained" and module.gradient_checkpointing
    with pytest.raises(ValueError, match=r"model.optimizer: unknown keys \['learning_rate'\]"):
        SwimModule(backbone={"kind": "tiny"}, loss={"layers": [1]}, optimizer={"learning_rate": 1.0})


@pytest.mark.slow
def test_nonfinite_skip_under_ddp_runs_backward_everywhere_and_leaves_weights(batches):
    """Two CPU ranks (gloo, forked): one with a supervised video batch, one text-only; every loss is NaN.

    Lightning forbids ``None`` with several processes, so both ranks agree to skip and back-propagate
    a zero-weighted loss; the non-finite LM-head gradients are dropped before the optimiser step.
    """
    module = tiny_module()
    with torch.no_grad():
        module.model.lm_head.weight[:, 0] = float("inf")
    before = snapshot(module)
    trainer = Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_fork",
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, train_dataloaders=loader([batches["supervised"], batches["text"]]))
    # Forked ranks send back rank 0's logged metrics and weights (not the trainer's step counter).
    assert float(trainer.callback_metrics["train/nonfinite_skips"]) == 2
    after = snapshot(module)
    assert all(torch.equal(before[name], after[name]) for name in before)
