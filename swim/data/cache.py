"""Read annotation files once, validate every record, and keep the result as memory-mapped Arrow.

The real annotation set is ~7 GB of JSON; decoding it in every dataloader worker would cost each
worker several times that in Python objects. Instead each source file is streamed once (one
record decoded at a time), every record is validated with :func:`swim.data.records.parse_record`,
and the kept records are written, normalised, to an Arrow IPC file that every process memory-maps
(pages are shared through the OS page cache, nothing is copied per worker). Segmentations stay
exactly as in the file, serialised as JSON text (RLE counts remain compressed strings).

Layout: ``<cache_dir>/records/<key>/`` with

- ``records.arrow``: one row per kept record (``index``, ``id``, ``format``, ``video``, ``image``,
  and ``turns``/``annotation``/``extra`` as JSON text);
- ``status.arrow``: one row per record in the file (``index``, ``row`` in ``records.arrow`` or -1,
  for rejections ``field``, ``reason``, ``detail``, and for kept records ``digest``: a hash of the
  normalised record without its index, equal for exact duplicates);
- ``meta.json``: what the key was made of, written last: a folder without it is not a cache.

``key`` hashes the file's absolute path, size and mtime, :data:`PARSER_VERSION`, the format and the
video root, so touching or editing the file, changing the parser or the video root all rebuild.
A change in the media files themselves (a video added or removed later) is not seen: delete the
folder (a video missing at load time is still caught then, as a counted skip). An interrupted
build leaves a ``<key>.tmp-*`` folder behind, which is safe to delete.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import logging
import re
import shutil
import tempfile
import time
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from swim.data.annotation import parse_json_int
from swim.data.records import parse_record
from swim.data.schema import Record, Rejection, Turn

log = logging.getLogger(__name__)

# Bump whenever parsing or validation changes what a record becomes: every cache is rebuilt.
PARSER_VERSION = 2
BATCH_ROWS = 1024
_CHUNK_CHARS = 1 << 22
_WS = re.compile(r"[ \t\n\r]*")

RECORD_SCHEMA = pa.schema(
    [
        ("index", pa.int64()),
        ("id", pa.string()),
        ("format", pa.string()),
        ("video", pa.string()),
        ("image", pa.string()),
        ("turns", pa.large_string()),
        ("annotation", pa.large_string()),
        ("extra", pa.large_string()),
    ]
)
STATUS_SCHEMA = pa.schema(
    [
        ("index", pa.int64()),
        ("row", pa.int64()),
        ("field", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("digest", pa.string()),
    ]
)


class AnnotationFileError(ValueError):
    """A source file that cannot be read as a whole (not JSON, not an array of records)."""


@dataclass(frozen=True)
class _Unparsable:
    """A record that does not decode: a JSON Lines line that is not JSON, or a value nested too deeply."""

    detail: str
    reason: str = "bad_json"


def iter_raw_records(path: str | Path) -> Iterator[tuple[int, Any]]:
    """Decode the records of a JSON array or JSON Lines file one at a time.

    Bytes that are not valid UTF-8 are kept as lone surrogates (``surrogateescape``) so that the
    record holding them can be rejected by field instead of failing the file. A JSON Lines line
    that does not parse yields an :class:`_Unparsable` instead of a value; blank lines are skipped.

    Yields:
        ``(index, value)``: the record's index (array position, or line number minus one).

    Raises:
        AnnotationFileError: a JSON array with a syntax error (naming the record index and the
            character offset), or a file that is neither an array nor JSON Lines.
    """
    path = Path(path)
    with path.open("rb") as handle:
        first = handle.read(1 << 16).lstrip()[:1]
        handle.seek(0)
        if first == b"[":
            yield from _iter_array(path, handle)
        elif first in (b"{", b""):
            for number, line in enumerate(handle):
                text = line.decode("utf-8", "surrogateescape").strip()
                if not text:
                    continue
                try:
                    yield number, json.loads(text, parse_int=parse_json_int)
                except json.JSONDecodeError as err:
                    yield number, _Unparsable(f"line {number + 1}: {err.msg}: column {err.colno}")
                except RecursionError:
                    yield number, _Unparsable(f"line {number + 1}: nested too deeply to decode", "too_deep")
        else:
            raise AnnotationFileError(
                f"{path}: expected a JSON array or JSON Lines, file starts with {first!r}"
            )


def _iter_array(path: Path, handle: Any) -> Iterator[tuple[int, Any]]:
    """Stream the elements of a top-level JSON array without decoding the whole file."""
    decoder = json.JSONDecoder(parse_int=parse_json_int)
    text_decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
    buf, pos, consumed, eof = "", 0, 0, False

    def more(chars: int) -> bool:
        nonlocal buf, pos, consumed, eof
        if eof:
            return False
        if pos > len(buf) // 2:
            consumed += pos
            buf, pos = buf[pos:], 0
        data = handle.read(chars)
        eof = not data
        buf += text_decoder.decode(data, final=eof)
        return True

    def skip_ws() -> str:
        nonlocal pos
        while True:
            pos = _WS.match(buf, pos).end()  # type: ignore[union-attr]
            if pos < len(buf) or not more(_CHUNK_CHARS):
                return buf[pos : pos + 1]

    def fail(index: int, what: str) -> AnnotationFileError:
        return AnnotationFileError(f"{path}: record {index}: {what} at character {consumed + pos}")

    if skip_ws() != "[":
        raise fail(0, "expected '['")
    pos += 1
    index = 0
    if skip_ws() == "]":
        return
    while True:
        skip_ws()
        while True:
            try:
                value, end = decoder.raw_decode(buf, pos)
            except json.JSONDecodeError as err:
                if more(max(_CHUNK_CHARS, len(buf) - pos)):
                    continue
                raise fail(index, f"invalid JSON ({err.msg})") from None
            except RecursionError:
                end = _value_end(buf, pos)
                if end is None and more(max(_CHUNK_CHARS, len(buf) - pos)):
                    continue
                if end is None:
                    raise fail(index, "a value nested too deeply to decode, never closed") from None
                value = _Unparsable(f"nested too deeply to decode (character {consumed + pos})", "too_deep")
                break
            if end < len(buf) or not more(_CHUNK_CHARS):
                break
        pos = end
        yield index, value
        index += 1
        sep = skip_ws()
        if sep == "]":
            return
        if sep != ",":
            raise fail(index, f"expected ',' or ']' after record {index - 1}, found {sep or 'end of file'!r}")
        pos += 1


def _value_end(text: str, start: int) -> int | None:
    """The end of the JSON array or object at ``text[start]``, by bracket counting; ``None`` if unclosed.

    Used only to step over a value too deeply nested for the decoder's recursion; strings (with
    their escapes) are skipped so brackets inside them do not count.
    """
    depth, position, length = 0, start, len(text)
    while position < length:
        char = text[position]
        if char == '"':
            position += 1
            while position < length and text[position] != '"':
                position += 2 if text[position] == "\\" else 1
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
            if depth == 0:
                return position + 1
        position += 1
    return None


def cache_key(path: Path, fmt: str, video_root: Path, check_files: bool) -> str:
    """Hash of what a cached source depends on (see the module docstring)."""
    stat = path.stat()
    parts = [
        str(path.resolve()),
        stat.st_size,
        stat.st_mtime_ns,
        PARSER_VERSION,
        fmt,
        str(video_root),
        check_files,
    ]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:24]


def build_source_cache(
    path: str | Path, *, fmt: str, video_root: str | Path, cache_dir: str | Path, check_files: bool = True
) -> Path:
    """Validate ``path`` into its cache folder (reused when it exists) and return the folder.

    Builds in a temporary folder and renames it into place, so concurrent processes (DDP ranks)
    never see a half-written cache; the loser of a race discards its copy.
    """
    path = Path(path).absolute()
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {path} does not exist")
    root = Path(video_root).absolute()
    folder = Path(cache_dir) / "records" / cache_key(path, fmt, root, check_files)
    if (folder / "meta.json").is_file():
        log.debug("records cache hit for %s: %s", path, folder)
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp-", dir=folder.parent))
    try:
        start = time.perf_counter()
        counts = _write_cache(path, fmt, root, check_files, tmp)
        meta = {"path": str(path), "format": fmt, "video_root": str(root), "parser_version": PARSER_VERSION}
        (tmp / "meta.json").write_text(json.dumps({**meta, **counts}, indent=1))
        try:
            tmp.rename(folder)
        except OSError:
            if not (folder / "meta.json").is_file():
                raise
        log.info(
            "cached %s: %d records, %d kept, in %.1fs -> %s",
            path,
            counts["records"],
            counts["kept"],
            time.perf_counter() - start,
            folder,
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _write_cache(path: Path, fmt: str, root: Path, check_files: bool, out: Path) -> dict[str, int]:
    rows: list[dict[str, Any]] = []
    status: dict[str, list[Any]] = {name: [] for name in STATUS_SCHEMA.names}
    kept = 0
    with pa.OSFile(str(out / "records.arrow"), "wb") as sink, pa.ipc.new_file(sink, RECORD_SCHEMA) as writer:
        for index, raw in iter_raw_records(path):
            if isinstance(raw, _Unparsable):
                parsed: Record | Rejection = Rejection(str(path), index, "<record>", raw.reason, raw.detail)
            else:
                parsed = parse_record(
                    raw, file=str(path), index=index, video_root=root, format=fmt, check_files=check_files
                )
            status["index"].append(index)
            if isinstance(parsed, Rejection):
                status["row"].append(-1)
                for name in ("field", "reason", "detail"):
                    status[name].append(getattr(parsed, name))
                status["digest"].append(None)
                continue
            status["row"].append(kept)
            for name in ("field", "reason", "detail"):
                status[name].append(None)
            row = _to_row(parsed)
            status["digest"].append(_digest(row))
            rows.append(row)
            kept += 1
            if len(rows) == BATCH_ROWS:
                writer.write_batch(pa.RecordBatch.from_pylist(rows, schema=RECORD_SCHEMA))
                rows.clear()
        if rows:
            writer.write_batch(pa.RecordBatch.from_pylist(rows, schema=RECORD_SCHEMA))
    with pa.OSFile(str(out / "status.arrow"), "wb") as sink, pa.ipc.new_file(sink, STATUS_SCHEMA) as writer:
        writer.write_table(pa.table(status, schema=STATUS_SCHEMA))
    return {"records": len(status["index"]), "kept": kept}


def _to_row(record: Record) -> dict[str, Any]:
    return {
        "index": record.index,
        "id": record.id,
        "format": record.format,
        "video": record.video,
        "image": record.image,
        "turns": json.dumps([[t.role, t.text, t.visual_offset] for t in record.turns], ensure_ascii=False),
        "annotation": json.dumps(
            [{str(frame): seg for frame, seg in inst.items()} for inst in record.annotation],
            ensure_ascii=False,
        ),
        "extra": json.dumps(record.extra, ensure_ascii=False),
    }


def _digest(row: dict[str, Any]) -> str:
    """Hash of a record row without its index: equal for records that are exact duplicates."""
    content = json.dumps({k: v for k, v in row.items() if k != "index"}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(content.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def read_status(folder: Path) -> pa.Table:
    """Per-record status of a cache folder: ``index``, ``row``, ``field``, ``reason``, ``detail``,
    ``digest``."""
    with pa.OSFile(str(folder / "status.arrow")) as source:
        return pa.ipc.open_file(source).read_all()


class RecordStore:
    """Random access to the kept records of one cache folder, memory-mapped, opened lazily.

    Pickles to its folder path only; each process re-opens the map on first access.
    """

    def __init__(self, folder: str | Path, file: str):
        self.folder = Path(folder)
        self.file = file
        self._reader: pa.ipc.RecordBatchFileReader | None = None
        self._starts: list[int] = []

    def __getstate__(self) -> dict[str, Any]:
        return {"folder": self.folder, "file": self.file}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["folder"], state["file"])  # type: ignore[misc]

    def _open(self) -> pa.ipc.RecordBatchFileReader:
        if self._reader is None:
            reader = pa.ipc.open_file(pa.memory_map(str(self.folder / "records.arrow")))
            sizes = [reader.get_batch(i).num_rows for i in range(reader.num_record_batches)]
            self._starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int).tolist() if sizes else []
            self._reader = reader
        return self._reader

    def get(self, row: int, *, source: str, supervise: bool) -> Record:
        """The kept record at ``row`` of ``records.arrow``."""
        reader = self._open()
        batch_no = bisect_right(self._starts, row) - 1
        batch = reader.get_batch(batch_no)
        values = batch.slice(row - self._starts[batch_no], 1).to_pylist()[0]
        turns = [Turn(role, text, offset) for role, text, offset in json.loads(values["turns"])]
        annotation = [{int(k): seg for k, seg in inst.items()} for inst in json.loads(values["annotation"])]
        return Record(
            source=source,
            file=self.file,
            index=values["index"],
            id=values["id"],
            format=values["format"],
            turns=turns,
            video=values["video"],
            image=values["image"],
            annotation=annotation,
            supervise=supervise,
            extra=json.loads(values["extra"]),
        )
