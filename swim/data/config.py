"""The sample-building knobs (:class:`DataConfig`), shared by training samples and evaluation prompts.

``swim.data.sample`` builds training samples with them and ``swim.data.media`` loads frames with
them; ``from swim.data.sample import DataConfig`` keeps working.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from swim.data.frames import VIDEO_MAX_PIXELS, VIDEO_MIN_PIXELS, VIDEO_TOTAL_PIXELS
from swim.data.video import VideoConfig

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
#: The reference's system prompt (METHOD.md section 9), needed to evaluate the published SWIM-7B.
REFERENCE_SYSTEM_PROMPT = (
    "You are Qwen, a helpful assistant with global scene understanding, capable of grounding "
    "user-specified text to the corresponding object instance in the image and providing "
    "fine-grained analysis based on visual evidence."
)
CELL_RULES = ("union", "reference")
LABEL_SPANS = ("answer", "reference")
MASK_RESOLUTIONS = ("frame", "original")


@dataclass
class DataConfig:
    """Sample-building knobs (top-level keys of ``conf/data/*.yaml``).

    Attributes:
        max_frames: frames sampled per video (annotated frames always kept; made even).
        min_pixels: per-frame pixel floor of videos (Qwen2.5-VL: 128 tokens of 28x28 px).
        max_pixels: per-frame pixel cap of videos (Qwen2.5-VL: 768 tokens).
        total_pixels: pixel budget of a whole video, shared by its frames (qwen-vl-utils' default).
        image_min_pixels, image_max_pixels: pixel bounds of single images (qwen-vl-utils' floor of
            4 tokens; the cap is the video per-frame cap rather than qwen-vl-utils' 16384 tokens).
        system_prompt: the system turn of every conversation; ``None`` leaves it to the template.
        query: supervised row of a tagged token at position p: ``predicting`` (p - 1, the query that
            predicts the token, the reference's behaviour) or ``token`` (p).
        pixel_masks: also carry ``(T, H, W)`` pixel masks (needed by the ``pred_to_mask`` loss).
        cell_rule: ground truth of temporal cell ``t`` (sampled frames ``2t``, ``2t+1``): ``union``
            of its annotated frames' masks, or ``reference``: the mask of frame ``2t+1`` if
            annotated, else of frame 0 if frame 0 is annotated (the reference's "no mask"
            sentinel), else none.
        label_span: CE labels of an assistant turn: ``answer`` (its tokens and ``<|im_end|>``) or
            ``reference`` (also ``<|im_start|>assistant\\n`` before and the newline after).
        mask_resolution: size of the pixel masks: ``frame`` (the resized frame) or ``original``
            (the video's own size, to which the reference upsamples its prediction).
        strict: raise on the first bad sample instead of counting and skipping it.
        max_length: longest sequence in tokens (visual tokens included); longer samples are rejected
            (``too_long``), never truncated.
        default_fps: frame rate assumed for frame folders and videos without one.
        video_threads: decoding threads per video (0: the decoder's choice).
        video: the decoder backend and the per-sample decode deadline (a mapping is converted).
    """

    max_frames: int = 32
    min_pixels: int = VIDEO_MIN_PIXELS
    max_pixels: int = VIDEO_MAX_PIXELS
    total_pixels: int = VIDEO_TOTAL_PIXELS
    image_min_pixels: int = 4 * 28 * 28
    image_max_pixels: int = VIDEO_MAX_PIXELS
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT
    query: str = "predicting"
    pixel_masks: bool = True
    cell_rule: str = "union"
    label_span: str = "answer"
    mask_resolution: str = "frame"
    strict: bool = False
    max_length: int = 16384
    default_fps: float = 4.0
    video_threads: int = 0
    video: VideoConfig = field(default_factory=VideoConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.video, VideoConfig):
            self.video = VideoConfig(**dict(self.video))
        if self.query not in ("predicting", "token"):
            raise ValueError(f"data.query={self.query!r}: expected 'predicting' or 'token'")
        for name, allowed in (
            ("cell_rule", CELL_RULES),
            ("label_span", LABEL_SPANS),
            ("mask_resolution", MASK_RESOLUTIONS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"data.{name}={getattr(self, name)!r}: expected one of {allowed}")
        if self.max_frames < 2:
            raise ValueError(
                f"data.max_frames={self.max_frames}: expected >= 2 (two frames per temporal cell)"
            )
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ValueError(
                f"data.min_pixels={self.min_pixels}, max_pixels={self.max_pixels}: expected 0 < min <= max"
            )
        if not 0 < self.image_min_pixels <= self.image_max_pixels:
            raise ValueError(
                f"data.image_min_pixels={self.image_min_pixels}, image_max_pixels={self.image_max_pixels}: "
                "expected 0 < min <= max"
            )
        if self.max_length < 1:
            raise ValueError(f"data.max_length={self.max_length}: expected >= 1")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> DataConfig:
        """The knobs present in ``values`` (other keys, e.g. ``train`` or ``batch_size``, are ignored)."""
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})
