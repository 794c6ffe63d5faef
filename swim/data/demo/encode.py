"""Writers: segmentations in the three forms the data formats allow, and video/image files.

Segmentation forms (the manifest names each record's form per instance):

- ``rle``: COCO RLE with compressed string counts, ``{"size": [h, w], "counts": "..."}``;
- ``rle_list``: COCO RLE with uncompressed counts, ``{"size": [h, w], "counts": [int, ...]}``:
  run lengths over the column-major (Fortran-order) flattened mask, the first run counting zeros;
- ``polygon``: ``[[x1, y1, x2, y2, ...]]``, the outline of an unoccluded square or triangle, no size
  (the frame size comes from the video).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

VIDEO_CRF = "18"


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """``(H, W)`` bool mask -> COCO RLE with compressed string counts."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def encode_rle_list(mask: np.ndarray) -> dict[str, Any]:
    """``(H, W)`` bool mask -> COCO RLE with uncompressed (list of int) counts, first run = zeros."""
    flat = mask.flatten(order="F").astype(np.int8)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        runs = [0, *runs]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(r) for r in runs]}


def write_mp4(path: Path, frames: np.ndarray, fps: int) -> None:
    """Write ``(F, H, W, 3)`` uint8 frames as H.264 (libx264, yuv420p) mp4; ``H``, ``W`` even.

    The decoded frames match the input up to compression error, but the bytes are not always the
    same from run to run: this libx264 build occasionally codes the first I-frame of identical
    input differently (seen single-threaded too), so only the rendered pixels are reproducible.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = int(frames.shape[2])
        stream.height = int(frames.shape[1])
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": VIDEO_CRF, "preset": "veryfast"}
        for index, frame in enumerate(frames):
            picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
            picture.pts = index
            for packet in stream.encode(picture):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_frame_folder(folder: Path, frames: np.ndarray) -> None:
    """Write ``(F, H, W, 3)`` uint8 frames as ``folder/00000.jpg``, ``00001.jpg``, ..."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{i:05d}.jpg", quality=92)


def write_png(path: Path, frame: np.ndarray) -> None:
    """Write one ``(H, W, 3)`` uint8 frame as a lossless PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(frame).save(path)
