"""Load the model to evaluate: a Lightning checkpoint, an exported Hugging Face folder, or a backbone.

Nothing is downloaded. ``ckpt`` may be

- a Lightning ``.ckpt`` file written by ``train.py``, or a DeepSpeed checkpoint folder (consolidated
  on the fly; ``swim.model.export.load_module``);
- a folder with ``config.json``: a Hugging Face export (``python -m swim.model.export``) or any local
  checkpoint of the config's family (``model.backbone.family``), read with ``local_files_only``;
- ``None``: the config's backbone as it is (``model=tiny`` gives the random tiny model used by the
  tests; ``model=qwen2_5_vl_7b`` the base model, for a baseline).
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, ProcessorMixin

from swim.data.spec import VisualSpec
from swim.model.backbone import BackboneConfig, TinyConfig, build_backbone
from swim.model.export import is_deepspeed_checkpoint, load_module
from swim.model.families import family_of

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A model ready for evaluation (eval mode, on its device) and its processor.

    Attributes:
        model: a ``...ForConditionalGeneration`` of any family (``swim/model/families``).
        processor: its processor (resizing off: frames are resized by our pipeline).
        source: what was loaded, for logs and reports.
    """

    model: PreTrainedModel
    processor: ProcessorMixin
    source: str

    @property
    def spec(self) -> VisualSpec:
        """The model family's geometry and visual layout, for the sample builder."""
        return family_of(self.model).spec


def backbone_config(values: Any) -> BackboneConfig:
    """A ``BackboneConfig`` from a mapping (the Hydra ``model.backbone`` node) or a config object."""
    if isinstance(values, BackboneConfig):
        return values
    fields = {f.name for f in dataclasses.fields(BackboneConfig)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(f"model.backbone has unknown keys {unknown}; expected some of {sorted(fields)}")
    kwargs = dict(values)
    if "tiny" in kwargs and not isinstance(kwargs["tiny"], TinyConfig):
        kwargs["tiny"] = TinyConfig(**dict(kwargs["tiny"]))
    return BackboneConfig(**kwargs)


def load_model(ckpt: str | None, backbone: BackboneConfig, *, device: str = "cpu") -> LoadedModel:
    """Load what ``ckpt`` names (see the module doc), in eval mode on ``device``.

    Raises:
        FileNotFoundError: ``ckpt`` does not exist, or is a folder without ``config.json``.
    """
    if ckpt is None:
        model, processor = build_backbone(backbone)
        source = f"backbone {backbone.kind}" + (f" {backbone.path}" if backbone.path else "")
        if backbone.kind == "tiny":
            log.warning("evaluating the tiny RANDOM-INIT model (no ckpt given): numbers are meaningless")
    else:
        path = Path(ckpt)
        if path.is_file() or is_deepspeed_checkpoint(path):
            model, processor = _from_lightning(path)
            source = f"lightning checkpoint {path}"
        elif (path / "config.json").is_file():
            local = dataclasses.replace(backbone, kind="pretrained", path=str(path))
            model, processor = build_backbone(local)
            source = f"hugging face folder {path}"
        elif path.is_dir():
            raise FileNotFoundError(
                f"ckpt={ckpt}: a folder that is neither a Hugging Face checkpoint (no config.json) nor a "
                "DeepSpeed checkpoint"
            )
        else:
            raise FileNotFoundError(f"ckpt={ckpt}: no such file or folder")
    model.to(device)
    model.eval()
    return LoadedModel(model=model, processor=processor, source=source)


def _from_lightning(path: Path) -> tuple[PreTrainedModel, ProcessorMixin]:
    """The module's model (its training probe removed, so evaluation can attach its own) and processor.

    A DeepSpeed checkpoint folder is consolidated into a temporary file first.
    """
    with tempfile.TemporaryDirectory(prefix="swim-eval-") as scratch:
        module = load_module(path, Path(scratch))
    if module.probe is not None:
        module.probe.remove()
    return module.model, module.processor
