"""A record's sequence length in tokens (visual tokens included), without decoding any media.

The token-budget sampler (:mod:`swim.data.budget`) needs every training sample's length before the
epoch starts. :func:`record_length` renders and tokenises the record's chat with
:meth:`~swim.data.sample.SampleBuilder.chat_ids`, the call the builder itself makes, and derives
the visual token grid from the media's headers only: a video file's frame count and size from its
container (PyAV, no frame decoded), a frame folder's file count and first frame size, an image's
size. Frames sampled and the resized
size follow the same rules as loading (:func:`~swim.data.frames.sample_frame_indices`'s count,
:func:`~swim.data.frames.fit_resolution`), so the length is **exact**: equal to ``len(sample)`` of
the built sample. The one exception is a container whose reported frame count differs from the
frames the decoder finds (``stream.frames`` is read from the header); only a video shorter than
``max_frames`` can then be off, and the loader's own ``too_long`` check still applies.

A record whose media cannot be read gets its text-only length: loading it fails anyway and is
counted as a skip then (``swim.data.dataset``), so it only takes a slot in a short batch.

:func:`mixture_lengths` keeps the lengths next to each source's validated-records cache
(``<cache>/lengths-<key>.npy``, one int64 per kept record, -1 where not computed yet), ``key``
hashing what a length depends on: the sample knobs (frames, pixel bounds, system prompt, label
span), the tokenizer and chat template, and the processor's patch sizes. A later run, every DDP
rank and every ``random:`` draw of the same file reuse it. Like the records cache, it does not see
media files changed in place (delete the file).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from swim.data.frames import FRAME_FACTOR, fit_resolution
from swim.data.mixture import Mixture
from swim.data.sample import SampleBuilder
from swim.data.schema import Record, Rejection, SampleError
from swim.data.video import open_video

log = logging.getLogger(__name__)

# Bump whenever the length computation changes: every lengths cache is recomputed.
LENGTHS_VERSION = 1


def record_length(record: Record, builder: SampleBuilder) -> int:
    """The length ``len(builder.build(record))`` in tokens, from the record and media headers.

    Raises:
        SampleError: the record's media cannot be read (``missing_video``, ``corrupt_image``, ...).
        ValueError: the chat template does not place the visual placeholder once.
    """
    cfg = builder.cfg
    kind = "video" if record.video is not None else "image" if record.image is not None else None
    _, ids, _, _ = builder.chat_ids(record, kind)
    if kind is None:
        return len(ids)
    if record.video is not None:
        num_frames, height, width = _video_header(record)
        budget = cfg.max_frames - cfg.max_frames % FRAME_FACTOR
        frames = min(budget, num_frames + num_frames % FRAME_FACTOR)
        bounds = {
            "min_pixels": cfg.min_pixels,
            "max_pixels": cfg.max_pixels,
            "total_pixels": cfg.total_pixels,
        }
        steps = frames // builder.temporal_patch
    else:
        assert record.image is not None
        frames, (height, width) = 1, _image_size(record)
        bounds = {
            "min_pixels": cfg.image_min_pixels,
            "max_pixels": cfg.image_max_pixels,
            "total_pixels": cfg.image_max_pixels,
        }
        steps = 1
    h, w = fit_resolution(height, width, frames, factor=builder.factor, **bounds)
    return len(ids) - 1 + steps * (h // builder.factor) * (w // builder.factor)


def record_lengths(records: Iterable[Record], builder: SampleBuilder, *, strict: bool = False) -> np.ndarray:
    """``(N,)`` int64: :func:`record_length` of every record (text-only length where media fail).

    Raises:
        SampleError: with ``strict``, the first record whose media cannot be read.
    """
    out = []
    for record in records:
        try:
            out.append(record_length(record, builder))
        except SampleError as error:
            if strict:
                raise
            log.debug("length of %s record %d from its text only: %s", record.file, record.index, error)
            out.append(record_length(_text_only(record), builder))
    return np.asarray(out, dtype=np.int64)


def mixture_lengths(mixture: Mixture, builder: SampleBuilder, *, strict: bool = False) -> np.ndarray:
    """``(len(mixture),)`` int64 lengths of the mixture's records, read from / added to the caches.

    Raises:
        SampleError: with ``strict``, the first record whose media cannot be read.
    """
    key = lengths_key(builder)
    parts, start = [], 0
    for folder, rows in mixture.cache_rows():
        rows = np.asarray(rows, dtype=np.int64)
        path = folder / f"lengths-{key}.npy"
        if path.is_file():
            table = np.load(path)
        else:
            kept = int(json.loads((folder / "meta.json").read_text())["kept"])
            table = np.full(kept, -1, dtype=np.int64)
        missing = np.flatnonzero(table[rows] < 0)
        if len(missing):
            records = (mixture[start + int(i)] for i in missing)
            table[rows[missing]] = record_lengths(records, builder, strict=strict)
            _save(path, table)
            log.info("lengths of %d records computed (%s)", len(missing), path)
        parts.append(table[rows])
        start += len(rows)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def lengths_key(builder: SampleBuilder) -> str:
    """Hash of everything a sample's length depends on besides its record."""
    cfg, tokenizer = builder.cfg, builder.tokenizer
    parts = [
        LENGTHS_VERSION,
        cfg.max_frames,
        cfg.min_pixels,
        cfg.max_pixels,
        cfg.total_pixels,
        cfg.image_min_pixels,
        cfg.image_max_pixels,
        cfg.system_prompt,
        cfg.label_span,
        builder.factor,
        builder.temporal_patch,
        type(tokenizer).__name__,
        len(tokenizer),
        str(getattr(builder.processor, "chat_template", None)),
        str(getattr(tokenizer, "name_or_path", "")),
    ]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def _save(path: Path, table: np.ndarray) -> None:
    """Write ``table`` to ``path`` atomically (concurrent DDP ranks write the same values)."""
    handle, tmp = tempfile.mkstemp(prefix=path.name + ".tmp-", dir=path.parent)
    with os.fdopen(handle, "wb") as out:
        np.save(out, table)
    os.replace(tmp, path)


def _video_header(record: Record) -> tuple[int, int, int]:
    """``(num_frames, height, width)`` of the record's video from its header (no frame decoded)."""
    path = record.video
    assert path is not None
    where = {"file": record.file, "index": record.index, "field": "video"}
    if os.path.isdir(path) or not os.path.isfile(path):
        source = open_video(path, **where)  # a frame folder's metadata, or the loader's own error
        return source.num_frames, source.height, source.width
    import av

    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            frames = int(stream.frames) or sum(1 for p in container.demux(stream) if p.size)
            return frames, int(stream.codec_context.height), int(stream.codec_context.width)
    except (av.FFmpegError, IndexError) as error:
        raise SampleError(
            Rejection(record.file, record.index, "video", "corrupt_video", f"{path}: {error}")
        ) from error


def _image_size(record: Record) -> tuple[int, int]:
    """``(height, width)`` of the record's image from its header."""
    assert record.image is not None
    try:
        with Image.open(record.image) as image:
            width, height = image.size
    except (OSError, ValueError) as error:
        raise SampleError(
            Rejection(record.file, record.index, "image", "corrupt_image", f"{record.image}: {error}")
        ) from error
    return height, width


def _text_only(record: Record) -> Record:
    return replace(record, video=None, image=None, annotation=[])
