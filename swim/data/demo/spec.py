"""Scene specifications: everything needed to re-render a demo video exactly, as plain JSON.

A scene is a few flat-coloured shapes moving in straight lines over a static grey texture. Each
object's centre at frame ``f`` of ``F`` is its start and end centres interpolated linearly and
rounded to whole pixels, so rendering is exact integer geometry (see ``render.py``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 70),
    "blue": (50, 90, 235),
    "yellow": (235, 210, 40),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
BACKGROUNDS: tuple[str, ...] = ("noise", "stripes")
STRIPE_ANGLES: tuple[str, ...] = ("horizontal", "vertical", "diagonal")
FPS = 4


@dataclass(frozen=True)
class ObjectSpec:
    """One shape.

    Attributes:
        colour: a key of :data:`COLOURS`.
        shape: one of :data:`SHAPES`.
        size: even side length in pixels (circle diameter, square side, triangle base and height).
        start: ``(x, y)`` integer centre of its bounding box on the first frame.
        end: ``(x, y)`` integer centre on the last frame.
        z: paint order; a higher ``z`` is in front.
    """

    colour: str
    shape: str
    size: int
    start: tuple[int, int]
    end: tuple[int, int]
    z: int

    @property
    def name(self) -> str:
        """The referring phrase, e.g. ``red circle``."""
        return f"{self.colour} {self.shape}"

    def centre(self, frame: int, num_frames: int) -> tuple[int, int]:
        """Integer bounding-box centre ``(x, y)`` on ``frame`` (linear motion, rounded half up)."""
        if num_frames <= 1:
            return self.start
        t = frame / (num_frames - 1)
        x = self.start[0] + (self.end[0] - self.start[0]) * t
        y = self.start[1] + (self.end[1] - self.start[1]) * t
        return math.floor(x + 0.5), math.floor(y + 0.5)


@dataclass(frozen=True)
class BackgroundSpec:
    """A static grey texture.

    Attributes:
        kind: ``noise`` (blocks of ``cell`` px with grey levels uniform in ``[low, high)``, drawn
            from ``seed``) or ``stripes`` (bands of ``cell`` px alternating ``low`` and ``high``).
        cell: noise block size or stripe width in pixels.
        low: darker grey level.
        high: lighter grey level.
        angle: stripe direction (one of :data:`STRIPE_ANGLES`); ``""`` for noise.
        seed: noise seed; unused for stripes.
    """

    kind: str
    cell: int
    low: int
    high: int
    angle: str
    seed: int


@dataclass(frozen=True)
class SceneSpec:
    """A whole scene.

    Attributes:
        name: file stem of its video, e.g. ``train_00012``.
        seed: the seed it was sampled from.
        width: frame width in pixels (even).
        height: frame height in pixels (even).
        num_frames: number of frames (1 for still images).
        fps: frames per second of its video.
        background: its texture.
        objects: its shapes; colour-and-shape names are unique within a scene.
        target: index into ``objects`` of the object its detailed caption describes.
    """

    name: str
    seed: int
    width: int
    height: int
    num_frames: int
    fps: int
    background: BackgroundSpec
    objects: tuple[ObjectSpec, ...]
    target: int

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (tuples become lists)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SceneSpec:
        """Inverse of :meth:`to_dict`; accepts the manifest's ``scenes[name]`` entries."""
        objects = tuple(
            ObjectSpec(
                colour=o["colour"],
                shape=o["shape"],
                size=int(o["size"]),
                start=(int(o["start"][0]), int(o["start"][1])),
                end=(int(o["end"][0]), int(o["end"][1])),
                z=int(o["z"]),
            )
            for o in data["objects"]
        )
        return cls(
            name=data["name"],
            seed=int(data["seed"]),
            width=int(data["width"]),
            height=int(data["height"]),
            num_frames=int(data["num_frames"]),
            fps=int(data["fps"]),
            background=BackgroundSpec(**data["background"]),
            objects=objects,
            target=int(data["target"]),
        )

    def index_of(self, name: str) -> int:
        """Index of the object called ``name`` (e.g. ``red circle``); ``KeyError`` if absent."""
        for i, obj in enumerate(self.objects):
            if obj.name == name:
                return i
        raise KeyError(f"scene {self.name} has no object named {name!r}")
