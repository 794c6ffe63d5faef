"""Question-answer pairs: two-object questions (NL-Refer-Q style) and general SFT questions.

Two-object questions are templates with ``{a}`` and ``{b}`` placeholders for the two objects'
(tagged or plain) names; each is made only when its answer is clear by a margin.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from swim.data.demo.facts import COVER_EVENT, SceneFacts
from swim.data.demo.language import (
    NUMBERS,
    displacement,
    image_summary,
    listing,
    motion,
    video_summary,
    when,
)
from swim.data.demo.spec import SceneSpec

#: Minimum centroid gap (px) for left/right/above/below statements.
SIDE_MARGIN = 10.0
#: Minimum area ratio for "larger" statements.
AREA_RATIO = 1.3
#: Minimum difference in displacement (px) for "moves farther" statements.
MOVE_MARGIN = 20.0


@dataclass(frozen=True)
class QA:
    """A question and its answer; pair templates hold ``{a}``/``{b}`` placeholders."""

    kind: str
    question: str
    answer: str


def pair_questions(facts: SceneFacts, scene: SceneSpec, a: int, b: int, rng: np.random.Generator) -> list[QA]:
    """Every clear two-object question about objects ``a`` and ``b``."""
    found = [
        _side(facts, a, b, 0, 0, rng),
        _side(facts, a, b, facts.num_frames - 1, 0, rng),
        _side(facts, a, b, 0, 1, rng),
        _side(facts, a, b, facts.num_frames - 1, 1, rng),
        _cover(facts, scene, a, b),
        _larger(facts, a, b, rng),
        _farther(facts, a, b),
    ]
    return [qa for qa in found if qa is not None]


def _side(facts: SceneFacts, a: int, b: int, frame: int, axis: int, rng: np.random.Generator) -> QA | None:
    gap = float(facts.centroid[a, frame, axis] - facts.centroid[b, frame, axis])
    if abs(gap) < SIDE_MARGIN:
        return None
    words = ("to the left of", "to the right of") if axis == 0 else ("above", "below")
    actual = words[0] if gap < 0 else words[1]
    asked = words[int(rng.integers(2))]
    moment = "at the start" if frame == 0 else "at the end"
    reply = "Yes" if asked == actual else "No"
    return QA(
        f"side_{'x' if axis == 0 else 'y'}_{'start' if frame == 0 else 'end'}",
        f"Is the {{a}} {asked} the {{b}} {moment}?",
        f"{reply}, {moment} the {{a}} is {actual} the {{b}}.",
    )


def _cover(facts: SceneFacts, scene: SceneSpec, a: int, b: int) -> QA | None:
    question = "Does the {a} pass behind the {b}?"
    a_hidden, b_hidden = facts.cover_frac(a, b), facts.cover_frac(b, a)
    if a_hidden.max() >= COVER_EVENT:
        moment = when(int(np.argmax(a_hidden >= COVER_EVENT)), scene.num_frames)
        return QA("cover", question, f"Yes, {moment} the {{b}} hides part of the {{a}}.")
    if b_hidden.max() >= COVER_EVENT:
        return QA("cover", question, "No, it is the other way round: the {a} hides part of the {b}.")
    if not facts.touches(a, b):
        return QA("cover", question, "No, the {a} and the {b} never touch.")
    return None


def _larger(facts: SceneFacts, a: int, b: int, rng: np.random.Generator) -> QA | None:
    area_a, area_b = float(facts.area[a, 0]), float(facts.area[b, 0])
    if max(area_a, area_b) < AREA_RATIO * min(area_a, area_b):
        return None
    first, second = ("{a}", "{b}") if rng.random() < 0.5 else ("{b}", "{a}")
    bigger = "{a}" if area_a > area_b else "{b}"
    return QA("larger", f"Which is larger, the {first} or the {second}?", f"The {bigger} is larger.")


def _farther(facts: SceneFacts, a: int, b: int) -> QA | None:
    move_a = float(np.hypot(*displacement(facts, a)))
    move_b = float(np.hypot(*displacement(facts, b)))
    if abs(move_a - move_b) < MOVE_MARGIN:
        return None
    if move_a > move_b:
        return QA("farther", "Which moves farther, the {a} or the {b}?", "The {a} moves farther.")
    return QA("farther", "Which moves farther, the {a} or the {b}?", "The {b} moves farther.")


def video_questions(facts: SceneFacts, scene: SceneSpec) -> list[QA]:
    """General questions about a whole video (no tags, no masks)."""
    names = [o.name for o in scene.objects]
    found = [
        QA("summary", "Describe the video briefly.", video_summary(scene, facts)),
        QA(
            "count",
            "How many shapes are in the video, and which are they?",
            f"There are {NUMBERS[len(names)]} shapes: {listing(names)}.",
        ),
    ]
    moves = sorted(
        ((float(np.hypot(*displacement(facts, k))), k) for k in range(len(names))),
        reverse=True,
    )
    if moves[0][0] - moves[1][0] >= MOVE_MARGIN:
        k = moves[0][1]
        found.append(
            QA("most_motion", "Which shape moves the most?", f"The {names[k]}: it {motion(facts, k)}.")
        )
    return found


def image_questions(facts: SceneFacts, scene: SceneSpec) -> list[QA]:
    """General questions about a still image (no tags, no masks)."""
    names = [o.name for o in scene.objects]
    found = [
        QA("summary", "Describe the image.", image_summary(scene, facts)),
        QA(
            "count",
            "How many shapes are in this image?",
            f"There are {NUMBERS[len(names)]} shapes: {listing(names)}.",
        ),
    ]
    xs = sorted((float(facts.centroid[k, 0, 0]), k) for k in range(len(names)))
    if xs[1][0] - xs[0][0] >= SIDE_MARGIN:
        found.append(QA("leftmost", "Which shape is furthest to the left?", f"The {names[xs[0][1]]}."))
    return found
