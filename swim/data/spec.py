"""What the data pipeline knows about a model family: plain data, no model classes.

A family's adapter (``swim/model/families``) builds a :class:`VisualSpec`; the pipeline reads the
geometry (frames are resized to multiples of :attr:`VisualSpec.token_px`, a temporal cell covers
:attr:`VisualSpec.temporal_patch` frames) and the visual-token layout from it, and finds a
sample's visual key columns by token id, never by "start + offset".

Layouts of one video of ``T`` temporal cells of ``h x w`` tokens (the chat text holds one
``video_pad`` placeholder, which the processor replaces):

- ``contiguous`` (Qwen2-VL, Qwen2.5-VL): ``video_pad x (T*h*w)``, one run;
- ``timestamped`` (Qwen3-VL): per cell ``<{t:.1f} seconds><|vision_start|>video_pad x (h*w)<|vision_end|>``,
  ``T`` runs with text between them; ``t`` is the mean time of the cell's first and last frame.

Images are one run of ``image_pad x (h*w)`` in both layouts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

Layout = Literal["contiguous", "timestamped"]
LAYOUTS = ("contiguous", "timestamped")


@dataclass(frozen=True)
class VisualSpec:
    """A family's geometry and visual-token layout.

    Attributes:
        patch_size: the vision tower's patch side in px (14 Qwen2/2.5-VL, 16 Qwen3-VL).
        merge_size: patches merged per token side (2).
        temporal_patch: frames per temporal cell (2).
        layout: see the module docstring.
        video_pad_id, image_pad_id, vision_start_id, vision_end_id: the special-token ids.
    """

    patch_size: int = 14
    merge_size: int = 2
    temporal_patch: int = 2
    layout: Layout = "contiguous"
    video_pad_id: int = 151656
    image_pad_id: int = 151655
    vision_start_id: int = 151652
    vision_end_id: int = 151653

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"VisualSpec.layout={self.layout!r}: expected one of {LAYOUTS}")
        for name in ("patch_size", "merge_size", "temporal_patch"):
            if getattr(self, name) < 1:
                raise ValueError(f"VisualSpec.{name}={getattr(self, name)}: expected a positive int")

    @property
    def token_px(self) -> int:
        """Side in px of one visual token (``patch_size * merge_size``): 28 or 32."""
        return self.patch_size * self.merge_size

    def check_processor(self, processor: Any) -> None:
        """Raise if ``processor``'s video geometry disagrees with this spec (naming both)."""
        vp = processor.video_processor
        got = (int(vp.patch_size), int(vp.merge_size), int(vp.temporal_patch_size))
        want = (self.patch_size, self.merge_size, self.temporal_patch)
        if got != want:
            raise ValueError(
                f"the processor's (patch_size, merge_size, temporal_patch_size) = {got} disagree with the "
                f"model family's visual spec {want}"
            )

    def video_ids(self, grid: tuple[int, int, int], timestamps: Sequence[float], tokenize: Any) -> list[int]:
        """The token ids the video placeholder expands to.

        Args:
            grid: the video's token grid ``(T, h, w)``.
            timestamps: ``T`` cell times in seconds (read only by the ``timestamped`` layout).
            tokenize: ``str -> list[int]`` without special tokens (the tokenizer's).
        """
        steps, height, width = grid
        if self.layout == "contiguous":
            return [self.video_pad_id] * (steps * height * width)
        if len(timestamps) != steps:
            raise ValueError(f"{len(timestamps)} cell timestamps for {steps} temporal cells")
        ids: list[int] = []
        for time in timestamps:
            ids += tokenize(f"<{time:.1f} seconds>")
            ids += [self.vision_start_id, *[self.video_pad_id] * (height * width), self.vision_end_id]
        return ids


def cell_timestamps(frame_indices: Sequence[int], fps: float, temporal_patch: int) -> list[float]:
    """Seconds of each temporal cell: the mean time of its first and last frame.

    ``frame_indices`` are the sampled frames' indices in the video (a last partial cell repeats the
    last frame, as the processor pads it).
    """
    indices = list(frame_indices)
    if not indices:
        return []
    indices += [indices[-1]] * (-len(indices) % temporal_patch)
    times = [index / fps for index in indices]
    return [(times[i] + times[i + temporal_patch - 1]) / 2 for i in range(0, len(times), temporal_patch)]
