"""Train SWIM: Hydra config in, checkpoints, logs and metrics.json out.

    python train.py                                   # the demo: tiny Qwen2.5-VL on synthetic videos, CPU
    python train.py experiment=swim_7b model.backbone.path=... data.root=...   # the paper's recipe
    python train.py -m loss.mask_weight=0,0.5,1       # a sweep; summary in the multirun dir
    python train.py ckpt_path=last hydra.run.dir=logs/train/runs/<run>       # resume a run
    python train.py --help | --cfg job

The recipe, top to bottom: seed; demo data if the data config asks for it; every data path and the
weights checked (all problems in one message, before anything is built); module, datamodule,
callbacks, loggers, strategy, trainer from their config groups; fit (resuming from ``ckpt_path``,
in the same W&B run); validate (unless the fit's last validation ran at its last step);
``metrics.json``; a summary of the grounding metrics and where everything went.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from swim.cli import run as run_cli
from swim.train.task import task_wrapper

log = logging.getLogger("train")


@task_wrapper
def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit and validate the module described by ``cfg``; returns the content of ``metrics.json``."""
    # Imported here, not at the top, so that `--help` and `--cfg job` need no torch or Lightning.
    import lightning.pytorch as L

    from swim.data.datamodule import SwimDataModule
    from swim.model.backbone import load_processor
    from swim.model.families import DEFAULT_FAMILY, get_family
    from swim.model.packing import mrope_of
    from swim.train.callbacks import LastValidationStep, RunInfoLogger
    from swim.train.checkpoints import (
        PreemptionCheckpoint,
        RestoreLoaderPosition,
        ScheduleLengthCheck,
        resolve_ckpt_path,
    )
    from swim.train.console import quiet_known_noise
    from swim.train.preflight import check_train_config
    from swim.train.report import (
        METRICS_FILE,
        build_report,
        scalar_metrics,
        write_metrics_json,
    )
    from swim.train.utils import (
        ensure_demo_data,
        instantiate_callbacks,
        instantiate_loggers,
        instantiate_strategy,
        loggable_config,
    )
    from swim.train.wandb_run import inherit_run_id

    quiet_known_noise()
    L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    family = get_family(OmegaConf.select(cfg, "model.backbone.family", default=DEFAULT_FAMILY))
    ensure_demo_data(cfg.data, token_px=family.spec.token_px)
    check_train_config(cfg)
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir)
    inherit_run_id(ckpt_path, output_dir)

    log.info("Instantiating module <%s>", cfg.model._target_)
    # Plain dicts, not DictConfigs, reach the module: its saved hyperparameters must load with
    # torch.load(weights_only=True) when a run resumes.
    module = hydra.utils.instantiate(cfg.model, loss=cfg.loss, _recursive_=False, _convert_="all")
    backbone = module.backbone_cfg
    rope = mrope_of(backbone) if cfg.data.get("packing") else None
    datamodule = SwimDataModule(
        cfg.data, processor=load_processor(backbone), spec=backbone.adapter.spec, rope=rope
    )

    run_info = RunInfoLogger(loggable_config(cfg))
    last_validation = LastValidationStep()
    callbacks = [
        *instantiate_callbacks(cfg.get("callbacks")),
        run_info,
        last_validation,
        RestoreLoaderPosition(),
        ScheduleLengthCheck(),
    ]
    loggers = instantiate_loggers(cfg.get("logger"))
    trainer = hydra.utils.instantiate(
        cfg.trainer,
        strategy=instantiate_strategy(cfg.strategy, cfg.trainer.accelerator),
        callbacks=callbacks,
        logger=loggers or False,
    )

    def finish(status: str, fit: dict[str, float], validation: dict[str, float]) -> dict[str, Any]:
        report = build_report(
            trainer,
            output_dir,
            status=status,
            fit=fit,
            validation=validation,
            optimized_metric=cfg.get("optimized_metric"),
            params=run_info.parameter_counts,
        )
        if trainer.is_global_zero:
            write_metrics_json(output_dir / METRICS_FILE, report)
        return report

    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except SystemExit:
        # Lightning's SIGTERMException after the current batch, or a scheduler's requeue handler
        # exiting the process: PreemptionCheckpoint has saved last.ckpt first.
        finish("stopped_by_signal", scalar_metrics(trainer.callback_metrics), {})
        raise
    fit_metrics = scalar_metrics(trainer.callback_metrics)
    if any(isinstance(cb, PreemptionCheckpoint) and cb.stopped for cb in callbacks):
        return finish("stopped_by_signal", fit_metrics, {})

    validation: dict[str, float] = {}
    if cfg.get("validate") and last_validation.step == trainer.global_step:
        log.info("The fit's last validation ran at step %d, its last step: not repeated", trainer.global_step)
        validation = {k: v for k, v in fit_metrics.items() if k.startswith("val/")}
    elif cfg.get("validate"):
        trainer.validate(module, datamodule=datamodule, verbose=False)
        validation = scalar_metrics(trainer.callback_metrics)
    return finish("finished", fit_metrics, validation)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns ``optimized_metric`` for sweepers (``None`` if it was not measured).

    The summary is printed here, after the task has closed W&B, so it is the last thing on screen.
    """
    report = train(cfg)
    from lightning.pytorch.utilities import rank_zero_only

    from swim.train.report import print_summary

    if rank_zero_only.rank == 0:
        print_summary(report)
    return report["optimized_value"]


if __name__ == "__main__":
    run_cli(main, "train.py", "train")
