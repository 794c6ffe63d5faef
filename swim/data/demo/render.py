"""Rasterise a :class:`SceneSpec` with numpy: no anti-aliasing, so the masks are exact.

A pixel ``(x, y)`` belongs to a shape when its centre ``(x + 0.5, y + 0.5)`` lies inside it (edges
included). Shapes are painted back to front by ``z``; an object's visible mask is where it is the
front-most shape.
"""

from __future__ import annotations

import numpy as np

from swim.data.demo.spec import COLOURS, BackgroundSpec, ObjectSpec, SceneSpec


def render_background(spec: BackgroundSpec, height: int, width: int) -> np.ndarray:
    """The static texture.

    Returns:
        ``(H, W, 3)`` uint8 grey image.
    """
    if spec.kind == "noise":
        rng = np.random.default_rng(spec.seed)
        rows, cols = -(-height // spec.cell), -(-width // spec.cell)
        blocks = rng.integers(spec.low, spec.high, size=(rows, cols), dtype=np.int64)
        grey = np.kron(blocks, np.ones((spec.cell, spec.cell), dtype=np.int64))[:height, :width]
    elif spec.kind == "stripes":
        ys, xs = np.mgrid[0:height, 0:width]
        coord = {"horizontal": ys, "vertical": xs, "diagonal": xs + ys}[spec.angle]
        grey = np.where((coord // spec.cell) % 2 == 0, spec.low, spec.high)
    else:
        raise ValueError(f"background kind {spec.kind!r}: expected 'noise' or 'stripes'")
    return np.repeat(grey.astype(np.uint8)[:, :, None], 3, axis=2)


def shape_mask(obj: ObjectSpec, centre: tuple[int, int], height: int, width: int) -> np.ndarray:
    """The object's full (unoccluded) silhouette with its bounding box centred on ``centre``.

    Returns:
        ``(H, W)`` bool.
    """
    cx, cy = centre
    half = obj.size / 2
    ys = np.arange(height, dtype=np.float64)[:, None] + 0.5
    xs = np.arange(width, dtype=np.float64)[None, :] + 0.5
    if obj.shape == "circle":
        return (xs - cx) ** 2 + (ys - cy) ** 2 <= half**2
    if obj.shape == "square":
        return (np.abs(xs - cx) <= half) & (np.abs(ys - cy) <= half)
    if obj.shape == "triangle":
        top = cy - half
        return (ys <= cy + half) & (np.abs(xs - cx) <= (ys - top) / 2)
    raise ValueError(f"shape {obj.shape!r}: expected circle, square or triangle")


def polygon(obj: ObjectSpec, centre: tuple[int, int]) -> list[float]:
    """COCO polygon ``[x1, y1, x2, y2, ...]`` of a square or triangle's outline at ``centre``."""
    cx, cy = centre
    half = obj.size / 2
    if obj.shape == "square":
        return [cx - half, cy - half, cx + half, cy - half, cx + half, cy + half, cx - half, cy + half]
    if obj.shape == "triangle":
        return [float(cx), cy - half, cx + half, cy + half, cx - half, cy + half]
    raise ValueError(f"shape {obj.shape!r} has no exact polygon: expected square or triangle")


def render_layers(scene: SceneSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render every frame and every object's full and visible masks.

    Returns:
        frames ``(F, H, W, 3)`` uint8; visible ``(K, F, H, W)`` bool; full ``(K, F, H, W)`` bool,
        for ``K`` objects in ``scene.objects`` order.
    """
    h, w, f_count, k_count = scene.height, scene.width, scene.num_frames, len(scene.objects)
    background = render_background(scene.background, h, w)
    frames = np.repeat(background[None], f_count, axis=0)
    full = np.zeros((k_count, f_count, h, w), dtype=bool)
    visible = np.zeros_like(full)
    order = sorted(range(k_count), key=lambda k: scene.objects[k].z)
    for f in range(f_count):
        front = np.full((h, w), -1, dtype=np.int64)
        for k in order:
            obj = scene.objects[k]
            full[k, f] = shape_mask(obj, obj.centre(f, f_count), h, w)
            front[full[k, f]] = k
            frames[f][full[k, f]] = COLOURS[obj.colour]
        for k in range(k_count):
            visible[k, f] = front == k
    return frames, visible, full


def render_scene(scene: SceneSpec) -> tuple[np.ndarray, np.ndarray]:
    """Render a scene.

    Returns:
        frames ``(F, H, W, 3)`` uint8 and visible-pixel masks ``(K, F, H, W)`` bool, one per object
        in ``scene.objects`` order.
    """
    frames, visible, _ = render_layers(scene)
    return frames, visible
