"""Measured facts about a rendered scene, from which every caption and answer is derived.

Everything here is computed from the rendered masks, not from the sampling intentions, so the
text can only state what the pixels show.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from swim.data.demo.spec import SceneSpec

#: Share of an object's area another shape must hide (at some frame) to count as "passes behind".
COVER_EVENT = 0.1
#: Minimum share of its area an object must show on a frame to be annotated there.
MIN_VISIBLE = 0.3


@dataclass(frozen=True)
class SceneFacts:
    """Per-object measurements of one scene (``K`` objects, ``F`` frames).

    Attributes:
        centroid: ``(K, F, 2)`` float, ``(x, y)`` centroid of the full silhouette (pixel centres).
        bbox: ``(K, F, 4)`` int, ``(x0, y0, x1, y1)`` of the full silhouette, ``x1``/``y1`` exclusive.
        area: ``(K, F)`` int, full silhouette area in pixels.
        visible: ``(K, F)`` int, visible pixels.
        covered: ``(K, K, F)`` int, ``covered[i, j, f]`` = pixels of ``i`` that ``j`` hides on
            frame ``f`` (zero unless ``j`` is in front of ``i``).
        width: frame width.
        height: frame height.
    """

    centroid: np.ndarray
    bbox: np.ndarray
    area: np.ndarray
    visible: np.ndarray
    covered: np.ndarray
    width: int
    height: int

    @property
    def num_frames(self) -> int:
        return int(self.area.shape[1])

    def visible_frac(self) -> np.ndarray:
        """``(K, F)`` float: visible share of each object's area."""
        return self.visible / np.maximum(self.area, 1)

    def cover_frac(self, i: int, j: int) -> np.ndarray:
        """``(F,)`` float: share of ``i``'s area hidden by ``j`` on each frame."""
        return self.covered[i, j] / np.maximum(self.area[i], 1)

    def touches(self, i: int, j: int) -> bool:
        """Whether the silhouettes of ``i`` and ``j`` overlap on any frame."""
        return bool(self.covered[i, j].any() or self.covered[j, i].any())

    def annotatable(self, k: int, unoccluded: bool = False) -> list[int]:
        """Frames where ``k`` shows at least :data:`MIN_VISIBLE` of its area (all of it if ``unoccluded``)."""
        frac = self.visible_frac()[k]
        ok = frac >= 1.0 if unoccluded else frac >= MIN_VISIBLE
        return [int(f) for f in np.flatnonzero(ok)]


def scene_facts(scene: SceneSpec, visible: np.ndarray, full: np.ndarray) -> SceneFacts:
    """Measure a rendered scene.

    Args:
        scene: its spec (for z-order and size).
        visible: ``(K, F, H, W)`` bool visible masks.
        full: ``(K, F, H, W)`` bool full silhouettes.
    """
    k_count, f_count, h, w = full.shape
    area = full.sum(axis=(2, 3))
    ys = np.arange(h, dtype=np.float64) + 0.5
    xs = np.arange(w, dtype=np.float64) + 0.5
    safe = np.maximum(area, 1)
    cx = (full.sum(axis=2) * xs).sum(axis=2) / safe
    cy = (full.sum(axis=3) * ys).sum(axis=2) / safe
    bbox = np.zeros((k_count, f_count, 4), dtype=np.int64)
    for k in range(k_count):
        for f in range(f_count):
            cols = np.flatnonzero(full[k, f].any(axis=0))
            rows = np.flatnonzero(full[k, f].any(axis=1))
            if cols.size:
                bbox[k, f] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    covered = np.zeros((k_count, k_count, f_count), dtype=np.int64)
    for i in range(k_count):
        for j in range(k_count):
            if scene.objects[j].z > scene.objects[i].z:
                covered[i, j] = (full[i] & full[j]).sum(axis=(1, 2))
    return SceneFacts(
        centroid=np.stack([cx, cy], axis=-1),
        bbox=bbox,
        area=area,
        visible=visible.sum(axis=(2, 3)),
        covered=covered,
        width=w,
        height=h,
    )
