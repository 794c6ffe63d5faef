"""The Hydra config tree: every option of every group composes and resolves; named recipes hold the
paper's numbers; train.py's --help and --cfg job work; W&B names follow the sweep."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch import Callback
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from train_fixtures import CONF, compose_train, run_train_py

from swim.train.resolvers import register_resolvers, run_name, sweep_group
from swim.train.utils import instantiate_callbacks, instantiate_loggers

register_resolvers()

# Groups selected from train.yaml's defaults list (hydra/ is Hydra's own, checked separately).
GROUPS = (
    "paths",
    "data",
    "model",
    "loss",
    "strategy",
    "trainer",
    "logger",
    "callbacks",
    "experiment",
    "hparams_search",
    "launcher",
)
OPTIONS = [(group, path.stem) for group in GROUPS for path in sorted((CONF / group).glob("*.yaml"))]


def compose_with_hydra(overrides: list[str]) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


def test_every_group_has_options():
    groups = {group for group, _ in OPTIONS}
    assert groups == set(GROUPS)
    assert {name for group, name in OPTIONS if group == "strategy"} >= {
        "auto",
        "ddp",
        "deepspeed_zero2",
        "deepspeed_zero3",
        "deepspeed_zero3_offload",
    }
    assert {name for group, name in OPTIONS if group == "logger"} >= {"wandb", "csv", "tensorboard", "many"}


@pytest.mark.parametrize(("group", "name"), OPTIONS, ids=[f"{g}={n}" for g, n in OPTIONS])
def test_every_option_composes_and_resolves(group: str, name: str, tmp_path: Path):
    cfg = compose_train([f"{group}={name}"], tmp_path / "run")
    resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    assert isinstance(resolved, dict)
    assert cfg.paths.output_dir == str(tmp_path / "run")
    for key in ("data", "model", "loss", "strategy", "trainer"):
        assert key in cfg, f"{group}={name} lost the {key} config"
    assert cfg.model._target_ == "swim.model.module.SwimModule"
    assert cfg.trainer._target_ == "lightning.pytorch.Trainer"
    if group == "callbacks":
        assert all(isinstance(cb, Callback) for cb in instantiate_callbacks(cfg.callbacks))
    if group == "logger":
        loggers = instantiate_loggers(cfg.logger)
        assert loggers and all(isinstance(logger, Logger) for logger in loggers)


def test_default_config_is_the_cpu_demo(tmp_path: Path):
    cfg = compose_train([], tmp_path)
    assert cfg.model.backbone.kind == "tiny"
    assert cfg.data.demo_dir.endswith("/demo")
    assert cfg.loss.layers == cfg.model.supervised_layers
    assert cfg.logger.wandb.offline is True
    assert cfg.callbacks.best_checkpoint.monitor == "val/pointing_game"
    assert cfg.callbacks.best_checkpoint.mode == "max"
    assert cfg.callbacks.last_checkpoint.save_last is True
    assert cfg.callbacks.last_checkpoint.dirpath == cfg.callbacks.preemption.dirpath
    assert cfg.callbacks.rich_progress_bar._target_ == "swim.train.console.StepProgressBar"
    assert cfg.callbacks.best_checkpoint.save_weights_only is True
    assert cfg.optimized_metric == "val/pointing_game"


def test_swim_7b_experiment_is_the_paper_recipe(tmp_path: Path):
    cfg = compose_train(["experiment=swim_7b"], tmp_path)
    assert cfg.model.backbone.kind == "pretrained"
    assert cfg.model.backbone.attn_implementation == "flash_attention_2"
    assert cfg.model.gradient_checkpointing is True
    assert cfg.model.freeze == "tower_and_merger"
    assert cfg.model.optimizer.lr == pytest.approx(2e-5)
    assert cfg.model.scheduler.name == "cosine"
    assert list(cfg.loss.layers) == [2, 7, 12, 17, 22, 27]
    assert (cfg.loss.text_weight, cfg.loss.mask_weight) == (0.05, 1.0)
    assert cfg.data.batch_size == 1
    assert (cfg.trainer.devices, cfg.trainer.accumulate_grad_batches, cfg.trainer.max_epochs) == (8, 4, 1)
    assert cfg.trainer.precision == "bf16-mixed"
    strategy = cfg.strategy
    assert strategy._target_ == "lightning.pytorch.strategies.DeepSpeedStrategy"
    assert (strategy.stage, strategy.offload_parameters, strategy.offload_optimizer) == (3, True, True)
    assert any(name.startswith("nl_refer_d") for name in cfg.data.train.sources)
    # Data and checkpoint paths are one override each.
    cfg = compose_train(["experiment=swim_7b", "model.backbone.path=/m/qwen7b", "data.root=/d/nl"], tmp_path)
    assert cfg.model.backbone.path == "/m/qwen7b"
    assert cfg.data.train.sources.nl_refer_d_1.path.startswith("/d/nl/")


def test_a_source_is_dropped_or_redirected_by_name(tmp_path: Path):
    cfg = compose_train(["data=nl_refer", "~data.train.sources.llava_video"], tmp_path)
    assert "llava_video" not in cfg.data.train.sources and "nl_refer_q" in cfg.data.train.sources
    cfg = compose_train(["data=nl_refer", "data.train.sources.nl_refer_q.path=/x/q.json"], tmp_path)
    assert cfg.data.train.sources.nl_refer_q.path == "/x/q.json"
    demo = compose_train(
        ["~data.train.sources.llava_video", "data.val.sources.val_nl_refer_d.sampling=first:1"], tmp_path
    )
    assert list(demo.data.train.sources) == ["nl_refer_d", "nl_refer_q"]


def test_demo_experiments_differ_only_in_the_loss(tmp_path: Path):
    swim = compose_train(["experiment=demo_swim"], tmp_path)
    text = compose_train(["experiment=demo_text_only"], tmp_path)
    assert swim.loss.mask_weight > 0
    assert text.loss.mask_weight == 0
    for key in ("model", "data", "trainer", "strategy"):
        assert swim[key] == text[key], key
    # train.py's recipe, trained three epochs instead of one.
    default = compose_train([], tmp_path)
    assert swim.model == default.model
    assert swim.data == OmegaConf.merge(default.data, {"query": "token"})
    schedule = ("max_steps", "val_check_interval", "gradient_clip_val")
    assert {k: swim.trainer[k] for k in schedule} == {k: default.trainer[k] for k in schedule}
    assert (default.trainer.max_epochs, swim.trainer.max_epochs) == (1, 3)
    # The demo supervises (and scores) the tagged tokens' own rows; the library default and the
    # reference-exact column keep the reference's predicting rows.
    reference = compose_train(["experiment=demo_reference"], tmp_path)
    assert (swim.loss.query, text.loss.query) == ("token", "token")
    assert (default.loss.query, reference.loss.query) == ("predicting", "predicting")
    assert swim.loss == OmegaConf.merge(default.loss, {"query": "token"})


def test_optuna_search_and_slurm_launcher_configure_hydra():
    cfg = compose_with_hydra(["hparams_search=optuna"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper")
    assert sweeper.direction == "maximize"
    assert set(sweeper.params) == {"loss.mask_weight", "loss.layers"}
    assert cfg.optimized_metric == "val/pointing_game"
    cfg = compose_with_hydra(["launcher=slurm", "trainer.devices=4"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.max_num_timeout > 0 and launcher.signal_delay_s > 0
    assert cfg.ckpt_path == "last"
    assert OmegaConf.select(cfg, "hydra.launcher.gpus_per_node") == 4


def test_hydra_config_registers_the_sweep_summary_and_the_overrides_history():
    cfg = compose_with_hydra([])
    assert cfg.hydra.callbacks.sweep_summary._target_ == "swim.train.sweep.SweepSummary"
    assert cfg.hydra.callbacks.overrides_history._target_ == "swim.train.history.OverridesHistory"
    assert cfg.hydra.job.chdir is False


def test_wandb_group_and_name_follow_the_multirun(tmp_path: Path):
    cfg = compose_with_hydra([])
    with read_write(cfg.hydra), open_dict(cfg):
        cfg.hydra.mode = RunMode.MULTIRUN
        cfg.hydra.sweep.dir = str(tmp_path / "2026-01-31_12-00-00")
        cfg.hydra.runtime.output_dir = str(tmp_path / "2026-01-31_12-00-00" / "1")
        cfg.hydra.job.num = 1
        cfg.hydra.job.override_dirname = "loss.mask_weight=0.5"
    HydraConfig().set_config(cfg)
    assert sweep_group() == "2026-01-31_12-00-00"
    assert run_name() == "1-loss.mask_weight=0.5"
    assert cfg.logger.wandb.group == "2026-01-31_12-00-00"
    with read_write(cfg.hydra), open_dict(cfg):
        cfg.hydra.mode = RunMode.RUN
        cfg.hydra.runtime.output_dir = str(tmp_path / "2026-01-31_13-00-00")
    HydraConfig().set_config(cfg)
    assert sweep_group() is None
    assert run_name() == "2026-01-31_13-00-00"


def test_train_py_help_and_cfg_job():
    result = run_train_py(["--cfg", "job", "experiment=demo_text_only", "loss.layers=[2,3]"])
    cfg = yaml.safe_load(result.stdout)
    assert cfg["loss"]["mask_weight"] == 0.0
    assert cfg["loss"]["layers"] == [2, 3]
    assert cfg["model"]["_target_"] == "swim.model.module.SwimModule"
    assert "hydra" not in cfg
    result = run_train_py(["--help"])
    assert "strategy: auto*, ddp, deepspeed_zero2, deepspeed_zero3, deepspeed_zero3_offload" in result.stdout
    assert "experiment: demo_reference, demo_swim, demo_text_only" in result.stdout
