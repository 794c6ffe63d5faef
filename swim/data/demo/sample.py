"""Draw random scenes: a target named by colour and shape among distractors of other colours.

Every object of a scene has its own colour, and one distractor has the target's shape, so the
colour word picks the target out and the shape word alone does not; a fourth object, if any, has
the remaining colour and any shape. Shape is not a property of one 28 px visual token (a token
inside a circle looks like one inside a square) and the tiny model's vision tower is random and
frozen, so a distractor that shared the target's colour could be told apart from it only by
evidence the model cannot read: a linear probe of the frozen visual tokens recovers an object's
colour from a token every time but its shape no better than the majority class
(``benchmarks/demo_separability.py``). In most videos one distractor's path crosses the target's
mid-video, so one passes in front of the other. A draw is kept only if every object shows at least
:data:`~swim.data.demo.facts.MIN_VISIBLE` of its area on the first frame and on half the frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from swim.data.demo.facts import MIN_VISIBLE, SceneFacts, scene_facts
from swim.data.demo.render import render_layers
from swim.data.demo.spec import (
    BACKGROUNDS,
    COLOURS,
    FPS,
    SHAPES,
    STRIPE_ANGLES,
    BackgroundSpec,
    ObjectSpec,
    SceneSpec,
)

#: ``(width, height)`` choices at 28 px tokens; most are multiples of 28 (one visual token = 28x28 px).
#: :func:`frame_sizes` scales those to another family's token side (32 px for Qwen3-VL).
FRAME_SIZES: tuple[tuple[int, int], ...] = (
    (112, 112),
    (168, 112),
    (112, 168),
    (168, 168),
    (224, 168),
    (168, 224),
    (224, 224),
    (224, 112),
    (160, 120),
    (200, 150),
)
MIN_FRAMES, MAX_FRAMES = 8, 16
MIN_SIZE, MAX_SIZE = 28, 56
#: The token side the constants above are written for.
BASE_TOKEN_PX = 28
STILL_SHARE = 0.15
CROSSING_SHARE = 0.8
MAX_TRIES = 200


@dataclass(frozen=True)
class RenderedScene:
    """A scene with its pixels and measurements.

    Attributes:
        spec: the scene.
        frames: ``(F, H, W, 3)`` uint8.
        visible: ``(K, F, H, W)`` bool visible masks.
        full: ``(K, F, H, W)`` bool full silhouettes.
        facts: measurements derived from the masks.
    """

    spec: SceneSpec
    frames: np.ndarray
    visible: np.ndarray
    full: np.ndarray
    facts: SceneFacts


def render_and_measure(spec: SceneSpec) -> RenderedScene:
    """Render ``spec`` and measure it."""
    frames, visible, full = render_layers(spec)
    return RenderedScene(spec, frames, visible, full, scene_facts(spec, visible, full))


def frame_sizes(token_px: int = BASE_TOKEN_PX) -> tuple[tuple[int, int], ...]:
    """:data:`FRAME_SIZES` at ``token_px``: sizes on the 28 px token grid move to the same grid of
    ``token_px`` tokens; the off-grid sizes stay as they are (they exercise resizing)."""

    def scaled(side: int) -> int:
        return side // BASE_TOKEN_PX * token_px

    return tuple(
        (scaled(w), scaled(h)) if w % BASE_TOKEN_PX == 0 and h % BASE_TOKEN_PX == 0 else (w, h)
        for w, h in FRAME_SIZES
    )


def sample_scene(
    name: str,
    seed: int,
    still: bool = False,
    target_shape: str | None = None,
    token_px: int = BASE_TOKEN_PX,
) -> RenderedScene:
    """Draw a scene deterministically from ``seed``.

    Args:
        name: the scene's name (its video's file stem).
        seed: random seed; the same seed gives the same scene.
        still: a single frame (for still images).
        target_shape: force the target's shape (``square`` or ``triangle`` so a polygon can
            outline it); the scene then also shows the target unoccluded on at least two frames.
        token_px: the model family's token side: frame sizes (:func:`frame_sizes`) and shape
            sizes scale with it; 28 draws exactly the scenes of the 28 px demo.

    Raises:
        RuntimeError: no acceptable scene in :data:`MAX_TRIES` draws (does not happen in practice).
    """
    rng = np.random.default_rng(seed)
    for _ in range(MAX_TRIES):
        rendered = render_and_measure(_draw(rng, name, seed, still, target_shape, token_px))
        outlined = target_shape is None or len(rendered.facts.annotatable(rendered.spec.target, True)) >= 2
        if _acceptable(rendered.facts) and outlined:
            return rendered
    raise RuntimeError(f"scene {name} (seed {seed}): no acceptable draw in {MAX_TRIES} tries")


def _acceptable(facts: SceneFacts) -> bool:
    frac = facts.visible_frac()
    first_ok = bool((frac[:, 0] >= MIN_VISIBLE).all())
    half_ok = bool(((frac >= MIN_VISIBLE).sum(axis=1) * 2 >= facts.num_frames).all())
    return first_ok and half_ok


def _draw(
    rng: np.random.Generator, name: str, seed: int, still: bool, target_shape: str | None, token_px: int
) -> SceneSpec:
    sizes_px = frame_sizes(token_px)
    width, height = sizes_px[int(rng.integers(len(sizes_px)))]
    num_frames = 1 if still else int(rng.integers(MIN_FRAMES, MAX_FRAMES + 1))
    colours = [str(c) for c in rng.permutation(list(COLOURS))]
    shape = target_shape or SHAPES[int(rng.integers(len(SHAPES)))]
    other_shapes = [s for s in SHAPES if s != shape]
    kinds = [
        (colours[0], shape),
        (colours[1], shape),
        (colours[2], other_shapes[int(rng.integers(len(other_shapes)))]),
    ]
    if rng.random() < 0.5:
        kinds.append((colours[3], SHAPES[int(rng.integers(len(SHAPES)))]))
    min_size = MIN_SIZE * token_px // BASE_TOKEN_PX // 2 * 2
    max_size = min(MAX_SIZE * token_px // BASE_TOKEN_PX, min(width, height) // 3) // 2 * 2
    sizes = [2 * int(rng.integers(min_size // 2, max_size // 2 + 1)) for _ in kinds]
    paths = [_random_path(rng, size, width, height, still) for size in sizes]
    if not still and rng.random() < CROSSING_SHARE:
        crosser = int(rng.integers(1, len(kinds)))
        path = _crossing_path(rng, paths[0], sizes[crosser], width, height, num_frames)
        if path is not None:
            paths[crosser] = path
    z_order = rng.permutation(len(kinds))
    objects = [
        ObjectSpec(colour=c, shape=s, size=size, start=start, end=end, z=int(z))
        for (c, s), size, (start, end), z in zip(kinds, sizes, paths, z_order, strict=True)
    ]
    order = rng.permutation(len(objects))
    return SceneSpec(
        name=name,
        seed=seed,
        width=width,
        height=height,
        num_frames=num_frames,
        fps=FPS,
        background=_background(rng),
        objects=tuple(objects[i] for i in order),
        target=int(np.flatnonzero(order == 0)[0]),
    )


def _background(rng: np.random.Generator) -> BackgroundSpec:
    kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    if kind == "noise":
        low = int(rng.integers(60, 100))
        cell = int(rng.choice([2, 4, 8]))
        return BackgroundSpec(kind, cell, low, low + int(rng.integers(30, 70)), "", int(rng.integers(2**31)))
    low = int(rng.integers(70, 110))
    angle = STRIPE_ANGLES[int(rng.integers(len(STRIPE_ANGLES)))]
    return BackgroundSpec(kind, int(rng.integers(4, 13)), low, low + int(rng.integers(25, 55)), angle, 0)


def _random_point(rng: np.random.Generator, size: int, width: int, height: int) -> tuple[int, int]:
    half = size // 2
    return int(rng.integers(half, width - half + 1)), int(rng.integers(half, height - half + 1))


def _random_path(
    rng: np.random.Generator, size: int, width: int, height: int, still: bool
) -> tuple[tuple[int, int], tuple[int, int]]:
    start = _random_point(rng, size, width, height)
    if still or rng.random() < STILL_SHARE:
        return start, start
    return start, _random_point(rng, size, width, height)


def _crossing_path(
    rng: np.random.Generator,
    target: tuple[tuple[int, int], tuple[int, int]],
    size: int,
    width: int,
    height: int,
    num_frames: int,
) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """A straight path that meets the target's path mid-video, or ``None`` if none fits the frame."""
    meet_frame = int(rng.integers(num_frames // 4, 3 * num_frames // 4 + 1))
    t = meet_frame / (num_frames - 1)
    (x0, y0), (x1, y1) = target
    meet_x, meet_y = x0 + (x1 - x0) * t, y0 + (y1 - y0) * t
    half = size // 2
    for _ in range(10):
        sx, sy = _random_point(rng, size, width, height)
        ex = round(sx + (meet_x - sx) / t)
        ey = round(sy + (meet_y - sy) / t)
        if half <= ex <= width - half and half <= ey <= height - half:
            return (sx, sy), (ex, ey)
    return None
