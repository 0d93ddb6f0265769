"""Whether a decoded token's linears run on two threads, chosen by measured time (:class:`SplitTuner`).

The two-thread decode (:mod:`fptq.runtime.decode`) opens four parallel regions per layer. On a quiet
machine two threads can read the weights at up to twice one thread's rate (27.6 vs 53.6 GB/s read on the
2-core machine, quiet); on a machine whose cores are busy with
other jobs, every region waits for the second thread to be scheduled (measured on the 2-core machine at
load average 6-7: 1.65 tokens/s split against 9.5 on one thread for the 1.5B model). Both give the same
bits, so the runtime may pick per token: :class:`SplitTuner` times each decoded token (M = 1), keeps the
median of each mode's last three tokens, uses the faster mode, and retries the other one after
``interval`` tokens (16 at first, doubling up to 64 while the retry loses, back to 16 when it wins):
at most one token in 64 pays for the retry, and a change of load is noticed within about 64 tokens.
"""

from __future__ import annotations

import statistics
from collections import deque

from .decode import NEVER

__all__ = ["SplitTuner"]


class SplitTuner:
    """Per decoded token: split (``dims[8]`` = the configured threshold) or serial (``dims[8]`` = NEVER).

    ``pick()`` sets ``dims[8]`` for the next token and returns the mode; ``record(mode, seconds)``
    files its time. Inactive (always the configured mode) with one thread or with the split turned off."""

    FIRST, LONGEST = 16, 64

    def __init__(self, dims):
        self.dims = dims
        self.threshold = int(dims[8])
        self.active = int(dims[6]) > 1 and self.threshold < NEVER
        self.times = {True: deque(maxlen=3), False: deque(maxlen=3)}
        self.prefer = True
        self.interval = self.FIRST
        self.since = 0

    def _estimate(self, mode: bool) -> float:
        t = self.times[mode]
        return statistics.median(t) if t else 0.0

    def pick(self) -> bool:
        """The mode of the next decoded token (``dims[8]`` set for it)."""
        if not self.active:
            return True
        mode = self.prefer
        if self.times[mode] and (not self.times[not mode] or self.since >= self.interval):
            mode = not mode
        self.dims[8] = self.threshold if mode else NEVER
        return mode

    def record(self, mode: bool, seconds: float) -> None:
        if not self.active:
            return
        self.times[mode].append(seconds)
        if mode == self.prefer:
            self.since += 1
            return
        self.since = 0
        if self._estimate(mode) < self._estimate(self.prefer):
            self.prefer, self.interval = mode, self.FIRST
        else:
            self.interval = min(2 * self.interval, self.LONGEST)
