"""Map-style dataset over a mixture: record ``i`` -> :class:`Sample`, or a :class:`SkippedRecord`.

In non-strict mode a record whose sample cannot be built (:class:`SampleError`: unreadable video,
bad RLE, too long, ...) is not replaced by another record: ``dataset[i]`` returns a
:class:`SkippedRecord` naming the record and the reason, and logs it (rate-limited). The collate
function drops it from the batch and counts it as ``skipped_records/<reason>`` in the batch's
``counters`` (``swim.data.collate``), so the batch is smaller and, when every record of it failed,
a placeholder the module steps over. A sampler visits each index once per epoch, so each bad
record is skipped and counted once per epoch and no good record is seen twice; batch ``k`` of an
epoch is always the same indices, so a mid-epoch resume lands where it stopped. In strict mode
the error propagates, naming file, record index and field.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from torch.utils.data import Dataset

from swim.data.sample import Sample, SampleBuilder
from swim.data.schema import Record, Rejection, SampleError

log = logging.getLogger(__name__)

# Each skip reason is logged for its first LOG_FIRST occurrences, then at every power of ten.
LOG_FIRST = 3
SKIPPED_PREFIX = "skipped_records/"


@dataclass(frozen=True)
class SkippedRecord:
    """A record of the mixture whose sample could not be built.

    Attributes:
        position: its index in the mixture.
        rejection: file, record index, field, reason and detail of the failure.
    """

    position: int
    rejection: Rejection

    @property
    def counter(self) -> str:
        """Its counter name, ``skipped_records/<reason>``."""
        return f"{SKIPPED_PREFIX}{self.rejection.reason}"


class SwimDataset(Dataset[Sample | SkippedRecord]):
    """Samples of ``mixture`` built by ``builder``.

    Args:
        mixture: a random-access sequence of records (``swim.data.mixture.Mixture``).
        builder: turns one record into one sample.
        strict: re-raise the first :class:`SampleError` instead of returning a :class:`SkippedRecord`.
    """

    def __init__(self, mixture: Sequence[Record], builder: SampleBuilder, strict: bool = False):
        self.mixture = mixture
        self.builder = builder
        self.strict = strict
        self.skipped: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self.mixture)

    def __getitem__(self, index: int) -> Sample | SkippedRecord:
        n = len(self.mixture)
        if not 0 <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} samples")
        try:
            with self.builder.stopwatch("read_record"):
                record = self.mixture[index]
            return self.builder.build(record)
        except SampleError as err:
            if self.strict:
                raise
            self._log_skip(err, index)
            return SkippedRecord(index, err.rejection)

    def _log_skip(self, err: SampleError, position: int) -> None:
        reason = err.rejection.reason
        self.skipped[reason] += 1
        count = self.skipped[reason]
        if count <= LOG_FIRST or _power_of_ten(count):
            log.warning(
                "skipped record %d (%s, occurrence %d in this process): %s", position, reason, count, err
            )


def _power_of_ten(count: int) -> bool:
    while count % 10 == 0 and count > 1:
        count //= 10
    return count == 1
