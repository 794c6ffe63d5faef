"""The strategy group: each option builds its Lightning strategy (DeepSpeed: the composed settings are
the recipe's, and without the package the error says what is missing); DDP really trains on CPUs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import hydra
import pytest
from hydra.errors import InstantiationException
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Trainer
from lightning.pytorch.strategies import DDPStrategy
from train_fixtures import FAST, compose_train, demo_overrides, read_metrics, run_train_py

from swim.train.utils import instantiate_strategy

HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None

# (stage, offload_parameters, offload_optimizer) of each DeepSpeed option.
DEEPSPEED = {
    "deepspeed_zero2": (2, False, False),
    "deepspeed_zero3": (3, False, False),
    "deepspeed_zero3_offload": (3, True, True),
}


def test_auto_is_lightnings_auto(tmp_path: Path):
    assert instantiate_strategy(compose_train(["strategy=auto"], tmp_path).strategy) == "auto"


def test_ddp_builds_a_ddp_strategy_for_a_cpu_trainer(tmp_path: Path):
    cfg = compose_train(["strategy=ddp", "strategy.find_unused_parameters=true"], tmp_path)
    strategy = instantiate_strategy(cfg.strategy)
    assert isinstance(strategy, DDPStrategy)
    assert strategy._ddp_kwargs["find_unused_parameters"] is True
    trainer = Trainer(
        strategy=strategy, accelerator="cpu", devices=2, logger=False, enable_checkpointing=False
    )
    assert trainer.world_size == 2
    assert trainer.strategy is strategy


@pytest.mark.parametrize("name", sorted(DEEPSPEED))
def test_deepspeed_options_compose_to_the_recipe_and_need_the_package(name: str, tmp_path: Path):
    cfg = compose_train([f"strategy={name}", "strategy.allgather_bucket_size=500000000"], tmp_path)
    strategy_cfg = cfg.strategy
    assert strategy_cfg._target_ == "lightning.pytorch.strategies.DeepSpeedStrategy"
    stage, offload_params, offload_optimizer = DEEPSPEED[name]
    assert strategy_cfg.stage == stage
    assert strategy_cfg.offload_parameters is offload_params
    assert strategy_cfg.offload_optimizer is offload_optimizer
    if offload_params or offload_optimizer:
        assert (strategy_cfg.offload_params_device, strategy_cfg.offload_optimizer_device) == ("cpu", "cpu")
    # A command-line override reaches the strategy's arguments.
    assert strategy_cfg.allgather_bucket_size == 500000000
    if HAS_DEEPSPEED:
        strategy = instantiate_strategy(strategy_cfg)
        assert strategy.config["zero_optimization"]["stage"] == stage
        return
    with pytest.raises(RuntimeError, match=r"needs the `deepspeed` package.*strategy=auto or strategy=ddp"):
        instantiate_strategy(strategy_cfg)
    # The config itself is right: only the missing package stops Lightning.
    with pytest.raises(InstantiationException, match="you must have DeepSpeed installed") as caught:
        hydra.utils.instantiate(strategy_cfg)
    assert isinstance(caught.value.__cause__, MisconfigurationException)


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra",
    [[], ["model.peft=lora"], ["data.max_tokens_per_batch=1024"]],
    ids=["full", "lora", "token_budget"],
)
def test_ddp_trains_two_gloo_processes_on_cpu(
    train_demo: Path, records_cache: Path, tmp_path: Path, extra: list[str]
):
    run_dir = tmp_path / "ddp"
    run_train_py(
        [
            *FAST,
            *demo_overrides(train_demo, records_cache),
            *extra,
            "strategy=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "logger=csv",
            f"hydra.run.dir={run_dir}",
        ],
        timeout=900,
    )
    report = read_metrics(run_dir)
    assert report["world_size"] == 2
    assert report["global_step"] == 2
    assert report["status"] == "finished"
    assert report["validate"]["val/num_samples"] > 0
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
