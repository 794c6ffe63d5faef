"""LoRA and QLoRA through ``peft``: which linear layers get adapters, and merging them for export.

``model.peft`` is ``null`` (full fine-tuning, the default), a preset name (``lora``, ``qlora``: the
files ``conf/model/peft/<name>.yaml``) or a mapping of :class:`PeftSettings` fields.

Adapters are injected *in place* (``peft.get_peft_model``): the module keeps calling the same
``...ForConditionalGeneration`` object (any family), whose targeted ``nn.Linear`` layers are now
``peft`` LoRA layers. The attention probe needs nothing new: it reads the queries and keys that the
attention function receives, i.e. the outputs of the LoRA-wrapped projections. Only the language
model's decoder layers are targeted (a name like ``gate_proj`` also exists in the vision tower's
MLPs), so the vision tower stays frozen. ``peft`` freezes every parameter but the adapters and the
``modules_to_save`` copies.

QLoRA loads a pretrained checkpoint in 4-bit NF4 through bitsandbytes, which needs CUDA; on a
machine without it, :class:`PeftSettings` refuses the config with a clear error.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from swim.model.backbone import DTYPES, BackboneConfig, checkpoint_folder
from swim.model.structured import to_dataclass

PEFT_METHODS = ("lora", "qlora")
PRESETS = Path(__file__).resolve().parents[2] / "conf" / "model" / "peft"
DECODER_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class PeftSettings:
    """What ``model.peft`` holds (``conf/model/peft/*.yaml``).

    Attributes:
        method: ``lora`` (adapters on the model's own dtype) or ``qlora`` (a 4-bit NF4 pretrained
            base, CUDA only).
        rank: LoRA rank ``r``.
        alpha: LoRA ``alpha``; the update is scaled by ``alpha / rank``.
        dropout: dropout on the adapters' input.
        target_modules: names of the decoder layers' linear layers that get adapters, a subset of
            ``q_proj k_proj v_proj o_proj gate_proj up_proj down_proj`` (language model only).
        modules_to_save: modules trained in full next to the adapters (``peft``'s
            ``modules_to_save``, matched by name, e.g. ``lm_head``, ``embed_tokens``, ``merger``).
    """

    method: str = "lora"
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    modules_to_save: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.method not in PEFT_METHODS:
            raise ValueError(f"model.peft.method={self.method!r}: expected one of {PEFT_METHODS}")
        if self.rank < 1:
            raise ValueError(f"model.peft.rank={self.rank}: expected a positive rank")
        if self.alpha <= 0:
            raise ValueError(f"model.peft.alpha={self.alpha}: expected a positive alpha")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.peft.dropout={self.dropout}: expected a value in [0, 1)")
        self.target_modules = [str(name) for name in self.target_modules]
        self.modules_to_save = [str(name) for name in self.modules_to_save]
        unknown = sorted(set(self.target_modules) - set(DECODER_LINEARS))
        if unknown or not self.target_modules:
            raise ValueError(
                f"model.peft.target_modules={self.target_modules}: expected a non-empty subset of "
                f"{list(DECODER_LINEARS)} (unknown: {unknown})"
            )
        if self.method == "qlora" and not torch.cuda.is_available():
            raise RuntimeError(
                "model.peft.method=qlora loads the backbone in 4-bit through bitsandbytes, which needs a "
                "CUDA GPU; this machine has none. Use model.peft=lora (bf16/fp32 base) instead"
            )

    def lora_config(self) -> LoraConfig:
        """The ``peft`` config: adapters on ``target_modules`` of the language model's decoder layers."""
        names = "|".join(self.target_modules)
        return LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=rf"model\.language_model\.layers\.\d+\.(self_attn|mlp)\.({names})",
            modules_to_save=list(self.modules_to_save) or None,
            bias="none",
        )


def peft_settings(value: Any) -> PeftSettings | None:
    """``model.peft`` as settings: ``None`` (full fine-tuning), a preset name, a mapping or settings.

    Raises:
        ValueError: an unknown preset name, or unknown keys.
    """
    if value is None or isinstance(value, PeftSettings):
        return value
    if isinstance(value, str):
        preset = PRESETS / f"{value}.yaml"
        if not preset.is_file():
            known = sorted(path.stem for path in PRESETS.glob("*.yaml"))
            raise ValueError(f"model.peft={value!r}: expected null, a mapping or a preset among {known}")
        value = OmegaConf.load(preset)
    if isinstance(value, DictConfig):
        value = OmegaConf.to_container(value, resolve=True)
    return to_dataclass(PeftSettings, value, "model.peft")


def settings_dict(settings: PeftSettings | None) -> dict[str, Any] | None:
    """Plain values of the settings (what a checkpoint's hyperparameters hold), ``None`` for full tuning."""
    return None if settings is None else dataclasses.asdict(settings)


@dataclass(frozen=True)
class Adapters:
    """The ``peft`` wrapper of a module's backbone, held outside ``nn.Module`` registration.

    The wrapper's ``base_model.model`` *is* the module's backbone; registering it as a submodule
    too would list every parameter twice in the state dict.
    """

    wrapper: PeftModel


def add_adapters(model: nn.Module, settings: PeftSettings) -> Adapters:
    """Inject LoRA adapters into ``model`` in place; then only adapters and ``modules_to_save`` train."""
    return Adapters(get_peft_model(model, settings.lora_config()))


def merged_backbone(adapters: Adapters, *, in_place: bool) -> nn.Module:
    """The backbone with the adapters merged into its weights (``merge_and_unload``): a stock model.

    Args:
        adapters: the module's adapters.
        in_place: merge into the module's own backbone (which then loses its adapters); ``False``
            merges a deep copy and leaves the module as it was.
    """
    wrapper = adapters.wrapper if in_place else copy.deepcopy(adapters.wrapper)
    return wrapper.merge_and_unload()


def check_peft_compatible(settings: PeftSettings, backbone: BackboneConfig, freeze: str) -> None:
    """Refuse combinations that cannot work: a trained base under adapters, QLoRA on a random model.

    Raises:
        ValueError: ``freeze`` is not ``tower_and_merger``, or QLoRA on a ``tiny`` backbone.
    """
    if freeze != "tower_and_merger":
        raise ValueError(
            f"model.freeze={freeze!r} with model.peft set: only the adapters train and the base stays "
            "frozen; keep model.freeze=tower_and_merger and name modules to train in full in "
            "model.peft.modules_to_save (e.g. merger)"
        )
    if settings.method == "qlora" and backbone.kind != "pretrained":
        raise ValueError(
            f"model.peft.method=qlora quantises a pretrained checkpoint at load; model.backbone.kind="
            f"{backbone.kind!r} is not one (set model.backbone.kind=pretrained and model.backbone.path)"
        )


def quantized_backbone(cfg: BackboneConfig) -> nn.Module:
    """A pretrained backbone (any family) in 4-bit NF4 (bitsandbytes) on this process's GPU, ready for QLoRA.

    The vision tower and the LM head stay in ``cfg.dtype``; ``peft.prepare_model_for_kbit_training``
    freezes the base and casts norms to fp32. Needs the ``bitsandbytes`` package (``gpu`` extra).
    """
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    dtype = DTYPES[cfg.dtype]

    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
        llm_int8_skip_modules=["visual", "lm_head"],
    )
    model = cfg.adapter.load_pretrained(
        checkpoint_folder(cfg),
        cfg.attn_implementation,
        dtype,
        quantization_config=quantization,
        device_map={"": torch.cuda.current_device()},
    )
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
