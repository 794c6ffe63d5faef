"""Shared fixtures of the sample / batch / datamodule tests: the real processor, real mp4 files with
known masks, a small generated demo dataset, and record builders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from corrupt_corpus import rle, square_frames, square_masks, write_mp4
from omegaconf import OmegaConf

from swim.data.sample import DataConfig
from swim.data.schema import Record, Turn
from swim.model.backbone import build_processor

REPO = Path(__file__).resolve().parents[1]
VIDEO_PAD_ID = 151656
IMAGE_PAD_ID = 151655
# corrupt_corpus's square video: 8 frames of 56 x 84 (h x w), a red square moving right.
SQUARE_FRAMES = 8
SQUARE_HW = (56, 84)
# Sample knobs that keep the small test videos at their size (the square video: 2x3 tokens per cell).
SMALL_CFG = DataConfig(
    max_frames=8, min_pixels=4 * 28 * 28, max_pixels=64 * 28 * 28, image_max_pixels=16 * 28 * 28
)


@pytest.fixture(scope="session")
def processor() -> Any:
    return build_processor()


@pytest.fixture(scope="session")
def square_video(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, np.ndarray]:
    """An 8-frame 56x84 H.264 mp4 of a moving red square, and its ``(8, 56, 84)`` bool masks."""
    path = write_mp4(tmp_path_factory.mktemp("square") / "square.mp4", square_frames())
    return str(path), square_masks()


@pytest.fixture(scope="session")
def still_image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 60x90 PNG (not a multiple of 28: it gets resized)."""
    from PIL import Image

    path = tmp_path_factory.mktemp("image") / "still.png"
    pixels = np.random.default_rng(0).integers(0, 255, (60, 90, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return str(path)


@pytest.fixture(scope="session")
def small_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated demo dataset (its root is the video root)."""
    from swim.data.demo import generate_demo

    root = tmp_path_factory.mktemp("demo")
    generate_demo(root, seed=0, num_train=6, num_val=2, num_bench=2, num_images=2, progress=False)
    return root


def square_annotation(frames: tuple[int, ...], masks: np.ndarray) -> dict[str, Any]:
    """One instance: frame index (string) -> ``{"segmentation": RLE}`` on ``frames``."""
    return {str(f): {"segmentation": rle(masks[f])} for f in frames}


def record(
    turns: list[Turn],
    *,
    video: str | None = None,
    image: str | None = None,
    annotation: list[dict[Any, Any]] | None = None,
    supervise: bool = True,
    index: int = 0,
) -> Record:
    """A hand-made record (as the records layer would produce it)."""
    return Record(
        source="test",
        file="test.json",
        index=index,
        id=f"test:{index}",
        format="nl_refer" if video is not None else "llava_video",
        turns=turns,
        video=video,
        image=image,
        annotation=annotation or [],
        supervise=supervise,
    )


def demo_data_config(demo_root: Path, cache_dir: Path, **overrides: Any) -> dict[str, Any]:
    """``conf/data/demo.yaml`` resolved against ``demo_root`` and ``cache_dir``, with overrides."""
    data = OmegaConf.load(REPO / "conf" / "data" / "demo.yaml")
    root = OmegaConf.create({"paths": {"cache_dir": str(cache_dir)}, "seed": 0, "data": data})
    root.data.demo_dir = str(demo_root)
    for key, value in overrides.items():
        root.data[key] = value
    resolved = OmegaConf.to_container(root, resolve=True)
    assert isinstance(resolved, dict)
    return resolved["data"]
