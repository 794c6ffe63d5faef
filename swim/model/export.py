"""Export a trained SWIM model as a stock Hugging Face folder of its family (Qwen2.5-VL, Qwen2-VL, Qwen3-VL).

SWIM changes only training: the exported folder is a plain ``...ForConditionalGeneration``
checkpoint (``save_pretrained``) and its processor, loadable with ``from_pretrained``
by anyone, with no ``swim`` import.

The processor is saved for *stock users with raw video*: training resizes frames itself and runs
the processor with ``do_resize=False``; the export turns resizing back on (``do_resize=True`` for
images and videos) and sets ``cap_pixels_per_frame=True`` so that a long video's total pixels are
bounded as in Qwen's reference preprocessing (qwen-vl-utils) and in our training pipeline's total
budget. Frames come out as multiples of the family's token side (28 or 32 px), the geometry the
model was trained on. The run's
video settings (``data.min_pixels``/``max_pixels`` per frame, ``data.max_frames``, read from the
run dir's ``.hydra/config.yaml`` next to ``checkpoints/``) become the video processor's ``size``
and ``num_frames`` (with ``do_sample_frames=True``), so the export sees a video as training did;
without them (no run dir) Qwen's defaults stay (128*28*28 to 768*28*28 pixels, every frame given)
and a warning says so. Decoding a video file is the user's: transformers' own loader needs
torchcodec, which this environment lacks; ``transformers.video_utils.load_video(path,
backend="pyav")`` works here (README, "Evaluation").

A LoRA module's adapters are merged into the weights first (``peft``'s ``merge_and_unload``, on a
copy for a module in memory, in place for one loaded from a checkpoint): the folder is a stock
checkpoint that transformers loads without ``peft``.

Sources:

- a :class:`~swim.model.module.SwimModule` in memory;
- a Lightning checkpoint file (``.ckpt``), loaded with ``SwimModule.load_from_checkpoint`` (which
  rebuilds the backbone from the saved hyperparameters, so a ``pretrained`` backbone's local
  folder must still exist);
- a DeepSpeed checkpoint directory (what Lightning's DeepSpeed strategy saves under ``*.ckpt/``):
  its ZeRO shards are consolidated into one fp32 state dict first, with
  ``lightning.pytorch.utilities.deepspeed.convert_zero_checkpoint_to_fp32_state_dict`` (needs the
  ``deepspeed`` package; tested on a ZeRO-3 run of two CPU processes in ``tests/test_deepspeed.py``).

The folder is written atomically: into a temporary sibling directory, then moved into place with
``os.replace``; a failed export leaves no partial folder behind.

CLI: ``python -m swim.model.export CKPT OUT [--overwrite]``.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from swim.model.lora import merged_backbone, settings_dict
from swim.model.module import SwimModule

log = logging.getLogger(__name__)

PROVENANCE_FILE = "swim_export.json"


def stock_processor(processor: Any, video: Mapping[str, Any] | None = None) -> Any:
    """A copy of the training processor that resizes raw images and videos itself (module docs).

    Args:
        processor: the training processor.
        video: the run's ``min_pixels``, ``max_pixels`` and ``max_frames`` (the data config), or
            ``None`` to keep Qwen's defaults.
    """
    stock = copy.deepcopy(processor)
    stock.image_processor.do_resize = True
    stock.video_processor.do_resize = True
    stock.video_processor.cap_pixels_per_frame = True
    if video is not None:
        stock.video_processor.size = {
            "shortest_edge": int(video["min_pixels"]),
            "longest_edge": int(video["max_pixels"]),
        }
        stock.video_processor.num_frames = int(video["max_frames"])
        stock.video_processor.do_sample_frames = True
    return stock


def run_video_settings(checkpoint: str | Path) -> dict[str, int] | None:
    """The data config's video settings of the run a checkpoint belongs to, or ``None``.

    Looks for ``<run dir>/.hydra/config.yaml`` with ``checkpoint`` in ``<run dir>/checkpoints/``.
    """
    folder = Path(checkpoint).resolve().parent
    run_dir = folder.parent if folder.name == "checkpoints" else folder
    config = run_dir / ".hydra" / "config.yaml"
    if not config.is_file():
        return None
    data = (yaml.safe_load(config.read_text()) or {}).get("data") or {}
    keys = ("min_pixels", "max_pixels", "max_frames")
    if not all(isinstance(data.get(key), int) for key in keys):
        return None
    return {key: int(data[key]) for key in keys}


def is_deepspeed_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a DeepSpeed checkpoint dir (a ``latest`` tag file or a ``checkpoint/`` dir)."""
    return path.is_dir() and ((path / "latest").is_file() or (path / "checkpoint").is_dir())


def load_module(checkpoint: str | Path, work_dir: Path) -> SwimModule:
    """A :class:`SwimModule` with the weights of a Lightning or DeepSpeed checkpoint, on the CPU.

    Args:
        checkpoint: a ``.ckpt`` file or a DeepSpeed checkpoint directory.
        work_dir: scratch space for the consolidated state dict of a DeepSpeed checkpoint.

    Raises:
        FileNotFoundError: no such file, or a directory that is not a DeepSpeed checkpoint.
    """
    path = Path(checkpoint)
    if is_deepspeed_checkpoint(path):
        from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict

        consolidated = work_dir / "consolidated.ckpt"
        log.info("consolidating DeepSpeed ZeRO shards of %s into %s", path, consolidated)
        convert_zero_checkpoint_to_fp32_state_dict(path, consolidated)
        path = consolidated
    elif path.is_dir():
        raise FileNotFoundError(
            f"{path} is a directory but not a DeepSpeed checkpoint (no 'latest' file or 'checkpoint/' dir)"
        )
    elif not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    # The checkpoint holds config dataclasses in its hyperparameters: a trusted, self-written file.
    module = SwimModule.load_from_checkpoint(path, map_location="cpu", weights_only=False)
    return module


def export_hf(
    source: SwimModule | str | Path,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    video: Mapping[str, Any] | None = None,
) -> Path:
    """Write a Hugging Face folder (model + processor) for a module or checkpoint.

    Args:
        source: a built :class:`SwimModule`, a ``.ckpt`` file or a DeepSpeed checkpoint directory.
        out_dir: the folder to create.
        overwrite: replace an existing ``out_dir``; otherwise an existing one is an error.
        video: the run's video settings (:func:`stock_processor`); ``None`` reads them from the
            checkpoint's run dir, and warns and keeps Qwen's defaults when there are none.

    Returns:
        The absolute path of the written folder.

    Raises:
        FileExistsError: ``out_dir`` exists and ``overwrite`` is False.
    """
    out = Path(out_dir).resolve()
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        if isinstance(source, SwimModule):
            module = source
            if module.model is None:
                module.configure_model()
            if any(hasattr(param, "ds_id") for param in module.model.parameters()):
                raise ValueError(
                    "the module's parameters are partitioned by DeepSpeed ZeRO-3; export its checkpoint "
                    "directory instead (its shards are consolidated first)"
                )
        else:
            module = load_module(source, staging)
        if video is None and not isinstance(source, SwimModule):
            video = run_video_settings(source)
        if video is None:
            log.warning(
                "the run's video settings (data.min_pixels, max_pixels, max_frames) were not found next to "
                "the checkpoint: the export's processor keeps Qwen's defaults, not the run's"
            )
        folder = staging / "export"
        backbone = module.model
        if module.adapters is not None:
            backbone = merged_backbone(module.adapters, in_place=not isinstance(source, SwimModule))
        backbone.save_pretrained(folder)
        stock_processor(module.processor, video).save_pretrained(folder)
        provenance = {
            "source": str(source) if not isinstance(source, SwimModule) else "SwimModule",
            "backbone": module.backbone_cfg.kind,
            "freeze": module.freeze,
            "peft": settings_dict(module.peft_cfg),
            "loss_layers": list(module.loss_cfg.layers),
            "video": dict(video) if video is not None else None,
        }
        (folder / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
        _replace_dir(folder, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("exported %s", out)
    return out


def _replace_dir(new: Path, target: Path) -> None:
    """Move dir ``new`` to ``target`` atomically; an existing ``target`` is swapped out, then removed."""
    if not target.exists():
        os.replace(new, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.replace(target, old / "previous")
    try:
        os.replace(new, target)
    except OSError:
        os.replace(old / "previous", target)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    """``python -m swim.model.export CKPT OUT [--overwrite]``."""
    parser = argparse.ArgumentParser(
        description="Export a SWIM checkpoint as a stock Hugging Face folder (model + processor)."
    )
    parser.add_argument("checkpoint", help="Lightning .ckpt file or DeepSpeed checkpoint directory")
    parser.add_argument("out", help="folder to write (model + processor)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = export_hf(args.checkpoint, args.out, overwrite=args.overwrite)
    Console().print(f"[green]exported[/green] {args.checkpoint} -> {out}")


if __name__ == "__main__":
    main()
