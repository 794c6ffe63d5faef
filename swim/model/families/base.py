"""What a model family's adapter owns, in one typed object.

A :class:`FamilyAdapter` is plain data (classes, ids, prefixes) plus the few methods that read
them: building the tiny and the pretrained model and processor, freezing by parameter name, the
dummy vision pass, and validating the attention probe's layers. Everything else in swim asks the
adapter (or reads its :class:`~swim.data.spec.VisualSpec`) instead of naming a family's classes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import AutoConfig

from swim.data.spec import VisualSpec
from swim.model.tokenizer import load_qwen_tokenizer

FREEZE_MODES = ("tower_and_merger", "tower", "none")


@dataclass
class TinyConfig:
    """Sizes of the random-init demo model (real vocabulary and geometry, small widths).

    ``deepstack_visual_indexes`` is read by Qwen3-VL only: the vision layers whose features
    DeepStack adds to the hidden states after decoder layers ``0, 1, ...`` (``None``: the first
    ``min(3, vision_depth)`` layers).
    """

    num_layers: int = 4
    hidden_size: int = 128
    intermediate_size: int = 256
    num_heads: int = 4
    num_kv_heads: int = 2
    mrope_section: list[int] = field(default_factory=lambda: [4, 6, 6])
    vision_depth: int = 2
    vision_hidden_size: int = 64
    vision_intermediate_size: int = 128
    vision_heads: int = 2
    deepstack_visual_indexes: list[int] | None = None
    seed: int = 0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def validate(self) -> None:
        """Raise unless the multimodal rope sections cover half a head (``sum * 2 == head_dim``)."""
        if sum(self.mrope_section) * 2 != self.head_dim:
            raise ValueError(
                f"mrope_section {self.mrope_section} must sum to head_dim/2 = {self.head_dim // 2}"
            )

    def text_config(self, rope_theta: float, **extra: Any) -> dict[str, Any]:
        """The language model's config fields shared by every family's tiny model: the real Qwen
        vocabulary, these widths and multimodal rope sections; ``extra`` adds family fields
        (``rope_extra`` goes into ``rope_parameters``)."""
        rope_extra = extra.pop("rope_extra", {})
        return dict(
            vocab_size=151936,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            **extra,
            max_position_embeddings=32768,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": rope_theta,
                "mrope_section": list(self.mrope_section),
                **rope_extra,
            },
        )


@dataclass(frozen=True)
class FamilyAdapter:
    """One model family.

    Attributes:
        name: the ``model.backbone.family`` value (``qwen2_5_vl``, ``qwen2_vl``, ``qwen3_vl``).
        model_type: the Hugging Face ``config.model_type`` of its checkpoints.
        model_class, processor_class, image_processor_class, video_processor_class: its classes.
        spec: the geometry and visual-token layout the data pipeline reads.
        chat_template: the tiny model's chat template (a pretrained one keeps its own).
        tiny_config: :class:`TinyConfig` -> the family's ``PretrainedConfig`` (real vocabulary,
            real geometry, tiny widths).
        eager_attention: the family's eager attention function (the probe's fallback kernel).
        merger_prefixes: parameter-name prefixes of the vision-to-language mergers (trained under
            ``model.freeze=tower``).
        tower_prefix: parameter-name prefix of the whole vision tower.
    """

    name: str
    model_type: str
    model_class: type
    processor_class: type
    image_processor_class: type
    video_processor_class: type
    spec: VisualSpec
    chat_template: str
    tiny_config: Callable[[TinyConfig], Any]
    eager_attention: Callable[..., Any]
    merger_prefixes: tuple[str, ...] = ("model.visual.merger.",)
    tower_prefix: str = "model.visual."

    # ------------------------------------------------------------------ model and processor
    def build_processor(self, tokenizer_path: str | Path | None = None) -> Any:
        """The real processor over the shipped Qwen tokenizer; resizing is left to the data pipeline."""
        tokenizer = load_qwen_tokenizer(tokenizer_path, chat_template=self.chat_template)
        patch = {"patch_size": self.spec.patch_size, "merge_size": self.spec.merge_size}
        video = {"do_resize": False, "do_sample_frames": False, "cap_pixels_per_frame": False, **patch}
        return self.processor_class(
            image_processor=self.image_processor_class(do_resize=False, **patch),
            video_processor=self.video_processor_class(**video),
            tokenizer=tokenizer,
            chat_template=tokenizer.chat_template,
        )

    def load_processor(self, folder: str) -> Any:
        """A checkpoint's own processor with resizing off (frames arrive resized)."""
        self.check_checkpoint(folder)
        processor = self.processor_class.from_pretrained(folder, local_files_only=True)
        processor.image_processor.do_resize = False
        processor.video_processor.do_resize = False
        return processor

    def build_tiny(self, tiny: TinyConfig, attn_implementation: str, dtype: torch.dtype) -> nn.Module:
        """A random-init model from ``tiny`` under its own seed (the global RNG is left alone)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(tiny.seed)
            config = self.tiny_config(tiny)
            config._attn_implementation = attn_implementation
            return self.model_class(config).to(dtype)

    def load_pretrained(
        self, folder: str, attn_implementation: str, dtype: torch.dtype, **kwargs: Any
    ) -> nn.Module:
        """A local checkpoint (``local_files_only``) of this family."""
        self.check_checkpoint(folder)
        return self.model_class.from_pretrained(
            folder, dtype=dtype, attn_implementation=attn_implementation, local_files_only=True, **kwargs
        )

    def check_checkpoint(self, folder: str) -> None:
        """Raise if the checkpoint's ``config.json`` names another family."""
        model_type = AutoConfig.from_pretrained(folder, local_files_only=True).model_type
        if model_type != self.model_type:
            raise ValueError(
                f"{folder} holds a {model_type!r} checkpoint, but model.backbone.family={self.name!r} "
                f"expects {self.model_type!r}"
            )

    # ------------------------------------------------------------------ modules
    def language_model(self, model: nn.Module) -> nn.Module:
        """The decoder stack (``.layers``) of a ``...ForConditionalGeneration`` model."""
        return model.model.language_model

    def frozen(self, name: str, mode: str) -> bool:
        """Whether parameter ``name`` is frozen under ``model.freeze=mode``.

        ``tower_and_merger`` freezes the whole vision tower (the reference recipe), ``tower`` all of
        it but the mergers (Qwen3-VL's DeepStack mergers included), ``none`` nothing.
        """
        if mode not in FREEZE_MODES:
            raise ValueError(f"model.freeze={mode!r}: expected one of {FREEZE_MODES}")
        in_tower = name.startswith(self.tower_prefix)
        in_merger = name.startswith(self.merger_prefixes)
        return (mode == "tower_and_merger" and in_tower) or (mode == "tower" and in_tower and not in_merger)

    def dummy_visual_pass(self, model: nn.Module, device: torch.device) -> Tensor:
        """``0 * sum`` of the vision tower's outputs on a dummy 1x2x2-patch video.

        Every output is summed: the merged tokens and, for Qwen3-VL, each DeepStack feature, so
        the DeepStack mergers run (and get a zero gradient) on a rank without video, as ZeRO-3
        needs. Returns a scalar (fp32) equal to 0.
        """
        visual = model.model.visual
        cfg = visual.config
        patch = cfg.in_channels * cfg.temporal_patch_size * cfg.patch_size**2
        pixels = torch.zeros(4, patch, dtype=visual.dtype, device=device)
        grid = torch.tensor([[1, 2, 2]], dtype=torch.long, device=device)
        out = visual(pixels, grid_thw=grid)
        total = out.pooler_output.float().sum()
        for feature in getattr(out, "deepstack_features", None) or []:
            total = total + feature.float().sum()
        return total * 0.0

    def check_probe_layers(self, model: nn.Module, layers: Sequence[int]) -> list[int]:
        """The probe's layers as ints, or a clear error (range, duplicates, sliding windows)."""
        language_model = self.language_model(model)
        num_layers = len(language_model.layers)
        wanted = [int(layer) for layer in layers]
        bad = [layer for layer in wanted if not 0 <= layer < num_layers]
        if bad or not wanted or len(set(wanted)) != len(wanted):
            raise ValueError(
                f"probe layers {list(layers)}: expected distinct decoder-layer indices in "
                f"0..{num_layers - 1} (the language model has {num_layers} layers); out of range: {bad}"
            )
        for layer in wanted:
            window = getattr(language_model.layers[layer].self_attn, "sliding_window", None)
            if window is not None:
                raise ValueError(
                    f"probe layer {layer} uses sliding-window attention ({window}); not supported"
                )
        return wanted
