"""Multiple-choice questions in VideoRefer-Bench-Q's five types, with answers checked by a margin.

Each question is a template whose ``{ref}`` becomes ``<object0><region>`` in the original form and
``the <ins>red circle</ins>`` in the NL-Refer form. Kinds (one per type):

- ``start_quadrant`` (Basic): which quarter of the frame holds the object's centroid on frame 0;
- ``direction`` (Sequential): the dominant axis and sign of its centroid displacement;
- ``relative_end`` (Relationship): where it is relative to another named object on the last frame;
- ``occluder`` (Reasoning): which other shape hides at least 10% of it at some frame, or none
  (only asked when no shape hides a smaller, ambiguous share);
- ``exit_edge`` (Future Predictions): which frame edge its bounding box reaches first if it keeps
  its average velocity.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from swim.data.demo.facts import COVER_EVENT, SceneFacts
from swim.data.demo.spec import COLOURS, SHAPES, SceneSpec

QUADRANT_MARGIN = 6.0
DIRECTION_MIN = 20.0
RELATION_MIN = 10.0
MIN_SPEED = 1.5
EDGE_RATIO = 0.67
NONE_OPTION = "None of the other shapes"
TYPES = {
    "start_quadrant": "Basic Questions",
    "direction": "Sequential Questions",
    "relative_end": "Relationship Questions",
    "occluder": "Reasoning Questions",
    "exit_edge": "Future Predictions",
}


@dataclass(frozen=True)
class BenchQuestion:
    """A question about object ``obj`` (and ``other``, for relationship questions).

    ``question`` holds a ``{ref}`` placeholder; ``options`` are unlettered, ``answer`` indexes them.
    """

    kind: str
    question: str
    options: list[str]
    answer: int
    obj: int
    other: int | None = None

    @property
    def type(self) -> str:
        return TYPES[self.kind]

    def lettered(self, order: list[int]) -> tuple[list[str], str]:
        """Options as ``(A) ...`` in the given order, and the lettered correct answer."""
        options = [f"({chr(65 + i)}) {self.options[j]}" for i, j in enumerate(order)]
        return options, options[order.index(self.answer)]


def bench_questions(facts: SceneFacts, scene: SceneSpec, rng: np.random.Generator) -> list[BenchQuestion]:
    """At most one clear question per kind, about the target if possible, else another object."""
    others = [int(k) for k in rng.permutation(len(scene.objects)) if k != scene.target]
    builders: list[Callable[[int], BenchQuestion | None]] = [
        lambda k: _start_quadrant(facts, k),
        lambda k: _direction(facts, k),
        lambda k: _relative_end(facts, scene, k, rng),
        lambda k: _occluder(facts, scene, k),
        lambda k: _exit_edge(facts, k),
    ]
    found = []
    for build in builders:
        for k in [scene.target, *others]:
            question = build(k)
            if question is not None:
                found.append(question)
                break
    return found


def _choice(kind: str, question: str, options: list[str], answer: str, k: int) -> BenchQuestion:
    return BenchQuestion(kind, question, options, options.index(answer), k)


def _start_quadrant(facts: SceneFacts, k: int) -> BenchQuestion | None:
    x, y = facts.centroid[k, 0]
    dx, dy = x - facts.width / 2, y - facts.height / 2
    if min(abs(dx), abs(dy)) < QUADRANT_MARGIN:
        return None
    options = ["The top left", "The top right", "The bottom left", "The bottom right"]
    answer = options[2 * int(dy > 0) + int(dx > 0)]
    question = "In which part of the frame is {ref} at the start of the video?"
    return _choice("start_quadrant", question, options, answer, k)


def _dominant(dx: float, dy: float, minimum: float) -> tuple[int, float] | None:
    """``(axis, signed displacement)`` if one axis clearly dominates, else ``None``."""
    if abs(dx) >= max(minimum, 2 * abs(dy)):
        return 0, dx
    if abs(dy) >= max(minimum, 2 * abs(dx)):
        return 1, dy
    return None


def _direction(facts: SceneFacts, k: int) -> BenchQuestion | None:
    dx, dy = (facts.centroid[k, -1] - facts.centroid[k, 0]).tolist()
    dominant = _dominant(dx, dy, DIRECTION_MIN)
    if dominant is None:
        return None
    options = ["From left to right", "From right to left", "From top to bottom", "From bottom to top"]
    axis, value = dominant
    answer = options[2 * axis + int(value < 0)]
    return _choice("direction", "In which direction does {ref} move?", options, answer, k)


def _relative_end(
    facts: SceneFacts, scene: SceneSpec, k: int, rng: np.random.Generator
) -> BenchQuestion | None:
    options = ["To the left of it", "To the right of it", "Above it", "Below it"]
    for j in rng.permutation(len(scene.objects)).tolist():
        if j == k:
            continue
        dx, dy = (facts.centroid[k, -1] - facts.centroid[j, -1]).tolist()
        dominant = _dominant(dx, dy, RELATION_MIN)
        if dominant is None:
            continue
        axis, value = dominant
        answer = options[2 * axis + int(value > 0)]
        question = f"At the end of the video, where is {{ref}} relative to the {scene.objects[j].name}?"
        return BenchQuestion("relative_end", question, options, options.index(answer), k, j)
    return None


def _occluder(facts: SceneFacts, scene: SceneSpec, k: int) -> BenchQuestion | None:
    others = [j for j in range(len(scene.objects)) if j != k]
    hidden = {j: float(facts.cover_frac(k, j).max()) for j in others}
    occluders = [j for j, share in hidden.items() if share >= COVER_EVENT]
    if len(occluders) > 1 or any(0 < share < COVER_EVENT for share in hidden.values()):
        return None
    names = [scene.objects[j].name for j in others]
    present = {o.name for o in scene.objects}
    absent = [f"{c} {s}" for c in COLOURS for s in SHAPES if f"{c} {s}" not in present]
    options = [f"The {n}" for n in names]
    options += [f"The {n}" for n in absent[: 3 - len(options)]]
    options.append(NONE_OPTION)
    answer = f"The {scene.objects[occluders[0]].name}" if occluders else NONE_OPTION
    question = "Which shape hides part of {ref} at some point in the video?"
    return _choice("occluder", question, options, answer, k)


def _time_to_edge(velocity: float, gap_low: float, gap_high: float) -> float:
    """Frames until a box moving at ``velocity`` px/frame closes the gap ahead of it."""
    if velocity > 0:
        return gap_high / velocity
    if velocity < 0:
        return gap_low / -velocity
    return float("inf")


def _exit_edge(facts: SceneFacts, k: int) -> BenchQuestion | None:
    steps = max(facts.num_frames - 1, 1)
    vx, vy = ((facts.centroid[k, -1] - facts.centroid[k, 0]) / steps).tolist()
    if np.hypot(vx, vy) < MIN_SPEED:
        return None
    x0, y0, x1, y1 = facts.bbox[k, -1].tolist()
    tx = _time_to_edge(vx, x0, facts.width - x1)
    ty = _time_to_edge(vy, y0, facts.height - y1)
    if min(tx, ty) > EDGE_RATIO * max(tx, ty):
        return None
    options = ["The left edge", "The right edge", "The top edge", "The bottom edge"]
    answer = options[int(vx > 0)] if tx < ty else options[2 + int(vy > 0)]
    question = "If {ref} keeps moving the same way, which edge of the frame will it reach first?"
    return _choice("exit_edge", question, options, answer, k)
