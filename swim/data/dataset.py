"""Map-style dataset over a mixture: record ``i`` -> :class:`Sample`, skipping bad samples in training.

In non-strict mode a record whose sample cannot be built (:class:`SampleError`: unreadable video,
bad RLE, too long, ...) is skipped: counted by reason as ``skip/<reason>``, logged (rate-limited),
and replaced by the next index that loads (``i+1``, ``i+2``, ... wrapping around), so the same
index always gives the same sample. The skip counters travel inside the replacement sample's
``counters`` into ``SwimBatch.counters``. In strict mode the error propagates, naming file, record
index and field.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence

from torch.utils.data import Dataset

from swim.data.sample import Sample, SampleBuilder
from swim.data.schema import Record, SampleError

log = logging.getLogger(__name__)

# Each skip reason is logged for its first LOG_FIRST occurrences, then at every power of ten.
LOG_FIRST = 3


class SwimDataset(Dataset[Sample]):
    """Samples of ``mixture`` built by ``builder``.

    Args:
        mixture: a random-access sequence of records (``swim.data.mixture.Mixture``).
        builder: turns one record into one sample.
        strict: re-raise the first :class:`SampleError` instead of skipping.
    """

    def __init__(self, mixture: Sequence[Record], builder: SampleBuilder, strict: bool = False):
        self.mixture = mixture
        self.builder = builder
        self.strict = strict
        self.skipped: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self.mixture)

    def __getitem__(self, index: int) -> Sample:
        n = len(self.mixture)
        if not 0 <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} samples")
        skips: Counter[str] = Counter()
        for step in range(n):
            position = (index + step) % n
            try:
                with self.builder.stopwatch("read_record"):
                    record = self.mixture[position]
                sample = self.builder.build(record)
            except SampleError as err:
                if self.strict:
                    raise
                self._skip(err, position)
                skips[f"skip/{err.rejection.reason}"] += 1
                continue
            if skips:
                sample.counters = dict(Counter(sample.counters) + skips)
            return sample
        raise RuntimeError(
            f"no record of the {n} in the mixture builds a sample; skipped by reason: {dict(skips)}"
        )

    def _skip(self, err: SampleError, position: int) -> None:
        reason = err.rejection.reason
        self.skipped[reason] += 1
        count = self.skipped[reason]
        if count <= LOG_FIRST or _power_of_ten(count):
            log.warning(
                "skipped sample %d (%s, occurrence %d in this process): %s", position, reason, count, err
            )


def _power_of_ten(count: int) -> bool:
    while count % 10 == 0 and count > 1:
        count //= 10
    return count == 1
