"""Batched, resumable generation over benchmark records, streamed to a JSONL file.

Each finished record becomes one flushed JSONL row right after its batch; a rerun over the same file
generates only the records without a successful row. A record whose video cannot be read raises in
strict mode; otherwise it gets a row with ``error`` (counted in the report, retried by a rerun).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from swim.data.media import load_video_clip
from swim.data.sample import DataConfig
from swim.data.schema import Record, SampleError
from swim.eval.generate import Prompt, generate
from swim.eval.loading import LoadedModel
from swim.eval.progress import progress_bar
from swim.eval.results import JsonlLog, skip_failed

log = logging.getLogger(__name__)


@dataclass
class GenerationConfig:
    """How answers are generated (``conf/eval.yaml``'s ``generation`` block).

    Attributes:
        batch_size: prompts per ``generate`` call (left-padded).
        max_new_tokens: answer length limit.
        region_text: how ``<objectN><region>`` is written for a model without region input.
    """

    batch_size: int = 4
    max_new_tokens: int = 64
    region_text: str = "object {n}"


@dataclass
class GenerationStats:
    """What one generation pass did: records generated now, already done, and failed by reason."""

    generated: int = 0
    resumed: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def generate_records(
    loaded: LoadedModel,
    records: Sequence[Record],
    prompt_of: Callable[[Record], str],
    row_of: Callable[[Record, str], dict[str, Any]],
    out: JsonlLog,
    *,
    gen: GenerationConfig,
    data: DataConfig,
    strict: bool,
) -> GenerationStats:
    """Answer every record not yet in ``out``, batch by batch, appending ``row_of(record, answer)``.

    Args:
        prompt_of: the user text of a record (tags removed), e.g. its question and options.
        row_of: the JSONL row of a record and its generated answer (must include ``id``).
        data: the sample-building knobs (frames, pixels, system prompt) the model was trained with.
        strict: raise on an unreadable video instead of writing an error row.
    """
    stats = GenerationStats()
    start = time.perf_counter()
    pending = [record for record in records if not out.finished(record.id)]
    stats.resumed = len(records) - len(pending)
    if stats.resumed:
        log.info("%s: %d records already done, %d to generate", out.path.name, stats.resumed, len(pending))
    with progress_bar(f"{out.path.name}: generating", len(pending)) as advance:
        for begin in range(0, len(pending), gen.batch_size):
            batch = pending[begin : begin + gen.batch_size]
            prompts: list[Prompt] = []
            kept: list[Record] = []
            for record in batch:
                try:
                    clip = None
                    if record.video is not None:
                        clip = load_video_clip(
                            record.video,
                            data,
                            annotation=record.annotation,
                            file=record.file,
                            index=record.index,
                            factor=loaded.spec.token_px,
                        )
                except SampleError as error:
                    skip_failed(out, record.id, error, stats.failed, strict=strict)
                    continue
                prompts.append(Prompt(id=record.id, text=prompt_of(record), clip=clip))
                kept.append(record)
            for group in _same_modality(list(zip(prompts, kept, strict=True))):
                answers = generate(
                    loaded.model,
                    loaded.processor,
                    [prompt for prompt, _ in group],
                    max_new_tokens=gen.max_new_tokens,
                    system_prompt=data.system_prompt,
                )
                for (_, record), answer in zip(group, answers, strict=True):
                    out.write(row_of(record, answer))
                    stats.generated += 1
            advance(len(batch))
    stats.seconds = time.perf_counter() - start
    return stats


def _same_modality(items: list[tuple[Prompt, Record]]) -> list[list[tuple[Prompt, Record]]]:
    with_video = [item for item in items if item[0].clip is not None]
    without = [item for item in items if item[0].clip is None]
    return [group for group in (with_video, without) if group]
