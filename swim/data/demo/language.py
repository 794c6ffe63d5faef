"""Truthful text about a measured scene: positions, motion, occlusion events, captions.

Every statement is derived from :class:`~swim.data.demo.facts.SceneFacts` with margins, and a
statement whose truth would hinge on a pixel or two is not made.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from swim.data.demo.facts import COVER_EVENT, SceneFacts
from swim.data.demo.spec import SceneSpec

#: Below this centroid displacement (px) over the video an object "stays almost still".
STILL_PX = 12.0
REGIONS = (
    ("top left corner", "top", "top right corner"),
    ("left side", "centre", "right side"),
    ("bottom left corner", "bottom", "bottom right corner"),
)
NUMBERS = {1: "one", 2: "two", 3: "three", 4: "four"}


@dataclass(frozen=True)
class Event:
    """Something that happens between object ``k`` and ``other``, first on ``frame``.

    ``kind``: ``behind`` (``other`` hides at least :data:`COVER_EVENT` of ``k``), ``front``
    (``k`` hides that much of ``other``) or ``brushes`` (they overlap, less than that).
    """

    kind: str
    other: int
    frame: int


def ref(scene: SceneSpec, k: int, tagged: bool) -> str:
    """The object's name, wrapped in ``<ins>`` tags if ``tagged``."""
    name = scene.objects[k].name
    return f"<ins>{name}</ins>" if tagged else name


def region(facts: SceneFacts, k: int, frame: int) -> str:
    """Which ninth of the frame holds the object's centroid on ``frame``, e.g. ``top left corner``."""
    x, y = facts.centroid[k, frame]
    col = min(int(3 * x / facts.width), 2)
    row = min(int(3 * y / facts.height), 2)
    return REGIONS[row][col]


def displacement(facts: SceneFacts, k: int) -> tuple[float, float]:
    """Centroid displacement ``(dx, dy)`` from the first to the last frame (``dy > 0`` is down)."""
    dx, dy = facts.centroid[k, -1] - facts.centroid[k, 0]
    return float(dx), float(dy)


def is_still(facts: SceneFacts, k: int) -> bool:
    return bool(np.hypot(*displacement(facts, k)) < STILL_PX)


def motion(facts: SceneFacts, k: int) -> str:
    """A verb phrase for the object's motion, e.g. ``moves from the left to the right``."""
    if is_still(facts, k):
        return f"stays almost still near the {region(facts, k, 0)}"
    dx, dy = displacement(facts, k)
    (x0, y0), (x1, y1) = facts.centroid[k, 0], facts.centroid[k, -1]
    if abs(dx) >= 2 * abs(dy):
        crosses = min(x0, x1) < facts.width / 2 < max(x0, x1)
        if dx > 0:
            return "moves from the left to the right" if crosses else "moves to the right"
        return "moves from the right to the left" if crosses else "moves to the left"
    if abs(dy) >= 2 * abs(dx):
        crosses = min(y0, y1) < facts.height / 2 < max(y0, y1)
        if dy > 0:
            return "moves from the top to the bottom" if crosses else "moves down"
        return "moves from the bottom to the top" if crosses else "moves up"
    vertical = "down" if dy > 0 else "up"
    horizontal = "right" if dx > 0 else "left"
    return f"moves diagonally {vertical} and to the {horizontal}"


def when(frame: int, num_frames: int) -> str:
    """``early on``, ``midway`` or ``near the end`` for a frame index."""
    share = frame / max(num_frames - 1, 1)
    if share < 1 / 3:
        return "early on"
    return "midway" if share < 2 / 3 else "near the end"


def events(facts: SceneFacts, k: int) -> list[Event]:
    """Object ``k``'s encounters with every other object, in order of first frame."""
    found = []
    for j in range(facts.area.shape[0]):
        if j == k or not facts.touches(k, j):
            continue
        behind, front = facts.cover_frac(k, j), facts.cover_frac(j, k)
        if behind.max() >= COVER_EVENT:
            found.append(Event("behind", j, int(np.argmax(behind >= COVER_EVENT))))
        elif front.max() >= COVER_EVENT:
            found.append(Event("front", j, int(np.argmax(front >= COVER_EVENT))))
        else:
            touching = facts.covered[k, j] + facts.covered[j, k]
            found.append(Event("brushes", j, int(np.argmax(touching > 0))))
    return sorted(found, key=lambda e: (e.frame, e.other))


def event_sentence(scene: SceneSpec, facts: SceneFacts, k: int, event: Event, previous: Event | None) -> str:
    """One sentence about an event, e.g. ``Midway, it passes behind the blue square.``

    ``previous`` is the event told just before; in the same third of the video it reads ``Then``.
    """
    other = scene.objects[event.other].name
    moving = not is_still(facts, k)
    if event.kind == "behind":
        verb = f"passes behind the {other}" if moving else f"is partly hidden by the {other}"
    elif event.kind == "front":
        verb = f"passes in front of the {other}" if moving else f"partly hides the {other}"
    else:
        verb = f"brushes against the {other}"
    moment = when(event.frame, scene.num_frames)
    if previous is not None and when(previous.frame, scene.num_frames) == moment:
        return f"Then it {verb}."
    return f"{moment.capitalize()}, it {verb}."


def size_sentence(scene: SceneSpec, facts: SceneFacts, k: int) -> str | None:
    """``It is the largest shape.`` / ``... smallest ...`` when its area is clearly extreme."""
    area = facts.area[:, 0].astype(np.float64)
    others = np.delete(area, k)
    if area[k] >= 1.3 * others.max():
        return "It is the largest shape in the video."
    if area[k] * 1.3 <= others.min():
        return "It is the smallest shape in the video."
    return None


def describe(scene: SceneSpec, facts: SceneFacts, k: int, tagged: bool, template: int) -> str:
    """A detailed, truthful caption of object ``k`` (``template`` in 0..2 picks the wording)."""
    name = ref(scene, k, tagged)
    end = region(facts, k, facts.num_frames - 1)
    if is_still(facts, k):
        first = f"The {name} {motion(facts, k)}."
    elif template == 0:
        first = (
            f"The {name} starts near the {region(facts, k, 0)} and {motion(facts, k)}, ending near the {end}."
        )
    elif template == 1:
        first = f"The {name} {motion(facts, k)}. It ends up near the {end}."
    else:
        first = f"In this video, the {name} {motion(facts, k)}, from near the {region(facts, k, 0)}."
    sentences = [first]
    size = size_sentence(scene, facts, k)
    if size is not None and template != 1:
        sentences.append(size)
    found = events(facts, k)
    sentences.extend(
        event_sentence(scene, facts, k, e, found[i - 1] if i else None) for i, e in enumerate(found)
    )
    if not found:
        sentences.append("It never touches another shape.")
    return " ".join(sentences)


def listing(names: list[str]) -> str:
    """``a red circle, a red square and a blue circle``."""
    items = [f"a {n}" for n in names]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def video_summary(scene: SceneSpec, facts: SceneFacts) -> str:
    """A short caption of the whole video (every object's motion), without tags."""
    texture = "noisy" if scene.background.kind == "noise" else "striped"
    parts = [f"the {o.name} {motion(facts, k)}" for k, o in enumerate(scene.objects)]
    body = ", ".join(parts[:-1]) + " and " + parts[-1]
    count = NUMBERS[len(scene.objects)]
    return f"{count.capitalize()} shapes move over a grey {texture} background: {body}."


def image_summary(scene: SceneSpec, facts: SceneFacts) -> str:
    """A short caption of a still image, objects listed with their positions."""
    texture = "noisy" if scene.background.kind == "noise" else "striped"
    parts = [f"a {o.name} near the {region(facts, k, 0)}" for k, o in enumerate(scene.objects)]
    body = ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"{NUMBERS[len(parts)].capitalize()} shapes on a grey {texture} background: {body}."
