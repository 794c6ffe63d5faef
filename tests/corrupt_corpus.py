"""A small annotation corpus where almost every record is broken in one known way.

:func:`build_corrupt_corpus` writes ``corrupt.json`` (a JSON array in the NL-Refer / LLaVA-Video
formats of DATA.md) and its media into a folder, and returns which reason each broken record must
be rejected for. Records not in ``expected_reasons`` are valid and must load. Reasons in
:data:`PARSE_TIME` are found by ``swim.data.records`` when the file is read; those in
:data:`LOAD_TIME` only when the sample is loaded (video decoded, masks decoded), and use the codes
of ``swim.data.video`` and ``swim.data.masks``.

Media are real: 8-frame 84x56 (w x h) H.264 mp4 files written with PyAV (libx264) showing a red
square moving right, a PNG frame folder, and COCO RLE masks of the square from pycocotools.

Decision on "a tag whose phrase is absent": a tag around text with no letter or digit
(``<ins>,</ins>``) names no word once tags are stripped, so there is no token to supervise; it is
rejected at parse time as ``tag_without_word``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

NUM_FRAMES = 8
HEIGHT, WIDTH = 56, 84
FPS = 4
SQUARE = 16

PARSE_TIME = frozenset(
    {
        "missing_video",
        "bad_tags",
        "tag_without_word",
        "empty_conversation",
        "no_assistant_turn",
        "invalid_utf8",
    }
)
LOAD_TIME = frozenset(
    {"corrupt_video", "empty_file", "bad_rle", "mask_size_mismatch", "frame_out_of_range", "not_a_video"}
)
_BAD_UTF8_MARK = "@@INVALID_UTF8@@"


def square_frames(num_frames: int = NUM_FRAMES, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """A red square moving left to right over a grey background.

    Returns:
        ``(F, H, W, 3)`` uint8 RGB frames.
    """
    frames = np.full((num_frames, height, width, 3), 120, dtype=np.uint8)
    for f, mask in enumerate(square_masks(num_frames, height, width)):
        frames[f][mask] = (220, 40, 40)
    return frames


def square_masks(num_frames: int = NUM_FRAMES, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """The square's masks, ``(F, H, W)`` bool."""
    masks = np.zeros((num_frames, height, width), dtype=bool)
    top = (height - SQUARE) // 2
    for f in range(num_frames):
        left = round(f * (width - SQUARE) / max(num_frames - 1, 1))
        masks[f, top : top + SQUARE, left : left + SQUARE] = True
    return masks


def rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO RLE with a compressed string ``counts`` of an ``(H, W)`` bool mask."""
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in encoded["size"]], "counts": encoded["counts"].decode("ascii")}


def write_mp4(path: str | Path, frames: np.ndarray, fps: int = FPS) -> Path:
    """Encode ``(F, H, W, 3)`` uint8 frames (H, W even) as an H.264 mp4 with PyAV."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = int(frames.shape[1]), int(frames.shape[2])
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "10"}
        for frame in frames:
            for packet in stream.encode(
                av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            ):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_frame_folder(folder: str | Path, frames: np.ndarray) -> Path:
    """Write ``(F, H, W, 3)`` uint8 frames as ``00000.png``, ``00001.png``, ... in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for f, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{f:05d}.png")
    return folder


def nl_refer_record(video: str, question: str, answer: str, frames: tuple[int, ...] = (0, 3, 6)) -> dict:
    """An NL-Refer-D record about the square with RLE masks on ``frames``."""
    masks = square_masks()
    return {
        "video": video,
        "index": f"videorefer_detailed_caption/{Path(video).stem}",
        "conversations": [
            {"from": "human", "value": f"<video>\n{question}"},
            {"from": "gpt", "value": answer},
        ],
        "annotation": [{str(f): {"segmentation": rle(masks[f])} for f in frames}],
    }


def build_corrupt_corpus(folder: str | Path) -> tuple[Path, dict[int, str]]:
    """Write ``corrupt.json`` and its media under ``folder``.

    Returns:
        The annotation file (its folder is the video root) and ``{record index: reason}`` for
        every broken record; indices absent from it are valid records.
    """
    folder = Path(folder)
    media = folder / "media"
    frames = square_frames()
    write_mp4(media / "good.mp4", frames)
    good = write_mp4(media / "truncated.mp4", frames).read_bytes()
    (media / "truncated.mp4").write_bytes(good[: len(good) // 2])
    (media / "empty.mp4").write_bytes(b"")
    Image.fromarray(frames[0]).save(media / "still.png")
    write_frame_folder(media / "frames", frames)

    ask, say = "Describe the <ins>red square</ins>.", "The <ins>red square</ins> slides to the right."
    wrong_size = nl_refer_record("media/good.mp4", ask, say)
    wrong_size["annotation"][0]["3"]["segmentation"] = rle(np.zeros((HEIGHT * 2, WIDTH), dtype=bool))
    garbage = nl_refer_record("media/good.mp4", ask, say)
    garbage["annotation"][0]["3"]["segmentation"]["counts"] = "!!garbage~~"
    beyond = nl_refer_record("media/good.mp4", ask, say)
    beyond["annotation"][0][str(NUM_FRAMES + 40)] = {"segmentation": rle(square_masks()[0])}

    cases: list[tuple[dict, str | None]] = [
        (nl_refer_record("media/good.mp4", ask, say), None),
        (
            {
                "id": "llava_0",
                "video": "media/good.mp4",
                "data_source": "LLaVA-Video-178K",
                "conversations": [
                    {"from": "human", "value": "<video>\nWhat moves?"},
                    {"from": "gpt", "value": "A square."},
                    {"from": "human", "value": "Which way?"},
                    {"from": "gpt", "value": "To the right."},
                ],
            },
            None,
        ),
        (nl_refer_record("media/truncated.mp4", ask, say), "corrupt_video"),
        (nl_refer_record("media/absent.mp4", ask, say), "missing_video"),
        (nl_refer_record("media/empty.mp4", ask, say), "empty_file"),
        (garbage, "bad_rle"),
        (wrong_size, "mask_size_mismatch"),
        (beyond, "frame_out_of_range"),
        (nl_refer_record("media/good.mp4", "Describe the <ins>red square.", say), "bad_tags"),
        (
            nl_refer_record("media/good.mp4", "Describe the <ins>red <ins>square</ins></ins>.", say),
            "bad_tags",
        ),
        (nl_refer_record("media/good.mp4", "Describe the <ins></ins> red square.", say), "bad_tags"),
        (nl_refer_record("media/good.mp4", "Describe the red square<ins>.</ins>", say), "tag_without_word"),
        ({**nl_refer_record("media/good.mp4", ask, say), "conversations": []}, "empty_conversation"),
        (
            {
                **nl_refer_record("media/good.mp4", ask, say),
                "conversations": [{"from": "human", "value": ask}],
            },
            "no_assistant_turn",
        ),
        (nl_refer_record("media/good.mp4", ask, f"The red square {_BAD_UTF8_MARK} moves."), "invalid_utf8"),
        (nl_refer_record("media/still.png", ask, say), "not_a_video"),
        (nl_refer_record("media/frames", ask, say), None),
    ]
    chunks = [json.dumps(record, ensure_ascii=False).encode("utf-8") for record, _ in cases]
    chunks = [chunk.replace(_BAD_UTF8_MARK.encode(), b"\xc3\x28\xff") for chunk in chunks]
    path = folder / "corrupt.json"
    path.write_bytes(b"[\n" + b",\n".join(chunks) + b"\n]\n")
    return path, {i: reason for i, (_, reason) in enumerate(cases) if reason is not None}
