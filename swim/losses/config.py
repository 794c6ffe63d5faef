"""The loss configuration: what ``conf/loss/*.yaml`` holds."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields

QUERY_CONVENTIONS = ("predicting", "token")
FUSIONS = ("product", "mean")
RESIZES = ("pred_to_mask", "mask_to_pred")
KINDS = ("bce", "soft_iou", "dice")
MINMAXES = ("exact", "reference")
RENORMALISATIONS = ("exact", "reference")
CELL_RULES = ("union", "reference")
LABEL_SPANS = ("answer", "reference")
MASK_RESOLUTIONS = ("frame", "original")


@dataclass
class LossConfig:
    """Weights and options of the SWIM loss (METHOD.md sections 3 and 4).

    Attributes:
        text_weight: weight of the next-token cross-entropy.
        mask_weight: weight of the attention-mask loss (0 turns SWIM into plain SFT).
        layers: supervised decoder layers of the language model.
        query: ``predicting`` supervises the row before each tagged token (the reference's
            behaviour), ``token`` the tagged token's own row.
        fusion: how the layers' maps are combined: ``product`` (renormalised product, the
            reference) or ``mean``.
        resize: ``pred_to_mask`` upsamples the prediction bilinearly to the pixel mask (the
            reference), ``mask_to_pred`` uses the mask area-downsampled to the token grid.
        kind: per-pair loss: ``bce``, ``soft_iou`` or ``dice``.
        keep_heads: capture per-head maps (for analysis); the loss uses their head average.
        causal: supervise the probabilities of the causal row (ours, what the model computes);
            ``False`` takes the softmax over the whole row, future keys included, as the reference.
        renormalise: the fusion's renormalisation: ``exact`` (ours) or ``reference``
            (``sum + 1e-6``); see :func:`swim.losses.fusion.fuse_layers`.
        minmax: per-cell normalisation: ``exact`` (ours, scale-invariant and squeezed into
            ``[squeeze, 1 - squeeze]``) or ``reference`` (``range + 1e-6``); see
            :mod:`swim.losses.mask_loss`.
        squeeze: the ``exact`` normalisation's margin from 0 and 1.
        cell_rule: ground truth of a temporal cell, built by the data pipeline (``data.cell_rule``
            follows it): ``union`` of its annotated frames (ours) or ``reference`` (the second frame
            only, frame 0 as the "no mask" sentinel).
        label_span: CE labels, built by the data pipeline (``data.label_span`` follows it):
            ``answer`` (answer tokens and ``<|im_end|>``, ours) or ``reference`` (also
            ``<|im_start|>assistant\\n`` and the newline after ``<|im_end|>``).
        mask_resolution: resolution of the pixel masks ``pred_to_mask`` compares with, built by the
            data pipeline (``data.mask_resolution`` follows it): ``frame`` (the resized frame, ours)
            or ``original`` (the video's own size, the reference).
    """

    text_weight: float = 0.05
    mask_weight: float = 1.0
    layers: list[int] = field(default_factory=list)
    query: str = "predicting"
    fusion: str = "product"
    resize: str = "pred_to_mask"
    kind: str = "bce"
    keep_heads: bool = False
    causal: bool = True
    renormalise: str = "exact"
    minmax: str = "exact"
    squeeze: float = 1e-3
    cell_rule: str = "union"
    label_span: str = "answer"
    mask_resolution: str = "frame"

    def __post_init__(self) -> None:
        self.layers = [int(layer) for layer in self.layers]
        self.text_weight = float(self.text_weight)
        self.mask_weight = float(self.mask_weight)
        self.squeeze = float(self.squeeze)
        if not 0.0 < self.squeeze < 0.5:
            raise ValueError(f"loss.squeeze={self.squeeze}: expected 0 < squeeze < 0.5")
        for name, allowed in (
            ("query", QUERY_CONVENTIONS),
            ("fusion", FUSIONS),
            ("resize", RESIZES),
            ("kind", KINDS),
            ("renormalise", RENORMALISATIONS),
            ("minmax", MINMAXES),
            ("cell_rule", CELL_RULES),
            ("label_span", LABEL_SPANS),
            ("mask_resolution", MASK_RESOLUTIONS),
        ):
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"loss.{name}={value!r}: expected one of {allowed}")
        if self.text_weight < 0 or self.mask_weight < 0:
            raise ValueError(
                f"loss weights must be >= 0, got text_weight={self.text_weight}, "
                f"mask_weight={self.mask_weight}"
            )
        if self.mask_weight > 0 and not self.layers:
            raise ValueError("loss.layers is empty but loss.mask_weight > 0: name the supervised layers")
        if len(set(self.layers)) != len(self.layers):
            raise ValueError(f"loss.layers={self.layers} repeats a layer")

    @property
    def supervises_attention(self) -> bool:
        """Whether the mask loss is on (the probe is needed)."""
        return self.mask_weight > 0

    @classmethod
    def from_mapping(cls, values: Mapping[str, object]) -> LossConfig:
        """A config from a plain mapping (e.g. ``OmegaConf.to_container(cfg.loss, resolve=True)``).

        Unknown keys raise, naming them; Hydra's ``_target_`` is ignored.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known - {"_target_"})
        if unknown:
            raise ValueError(f"loss config has unknown keys {unknown}; expected a subset of {sorted(known)}")
        return cls(**{key: value for key, value in values.items() if key in known})
