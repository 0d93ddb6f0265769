"""Whether a decoded token's linears run on two threads, chosen by measured time (:class:`SplitTuner`).

The two-thread decode (:mod:`fptq.runtime.decode`) opens four parallel regions per layer. On a quiet
machine two threads can read the weights at up to twice one thread's rate (27.6 vs 53.6 GB/s read on
the 2-core machine, quiet); on a machine whose cores are busy with other jobs, every region waits for
the second thread to be scheduled (measured on the 2-core machine at load average 6-8: 1.1-1.7 tokens/s
split against 8.4-9.5 on one thread for the 1.5B model). Both give the same bits, so the runtime picks
per token: :class:`SplitTuner` times each decoded token (M = 1), keeps the median of the preferred
mode's last three tokens, uses the faster mode (a retry must win on two tokens in a row to become it),
and retries the other one after ``interval`` tokens
(16 at first; while the retry loses, doubled up to 64 and times how many times slower it was, at most
256; back to 16 when it wins), or at once when a token of the preferred mode takes over three times or
under a third of its median (the load changed; at 2x, a loaded machine's own token-to-token spread
triggered retries often enough to cost about 10%, simulated with the measured 3.4x gap and a 30% spread).
The scaling: under that load a split token cost about 8 serial ones, and a retry every 64 tokens at that
price would add 11% to the time.
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

    FIRST, LONGEST, RETRY_MAX = 16, 64, 256

    def __init__(self, dims):
        self.dims = dims
        self.threshold = int(dims[8])
        self.active = int(dims[6]) > 1 and self.threshold < NEVER
        self.times = {True: deque(maxlen=3), False: deque(maxlen=3)}
        self.prefer = True
        self.interval = self.FIRST
        self.since = 0
        self.confirming = False

    def _estimate(self, mode: bool) -> float:
        t = self.times[mode]
        return statistics.median(t) if t else 0.0

    def pick(self) -> bool:
        """The mode of the next decoded token (``dims[8]`` set for it)."""
        if not self.active:
            return True
        mode = self.prefer
        if self.confirming:
            mode = not mode                           # a retry that won runs once more before it is preferred
        elif self.times[mode] and (not self.times[not mode] or self.since >= self.interval):
            mode = not mode
            self.times[mode].clear()                  # a retry is judged on its own time, not stale ones
        self.dims[8] = self.threshold if mode else NEVER
        return mode

    def record(self, mode: bool, seconds: float) -> None:
        """File a decoded token's time. A preferred-mode token over three times or under a third of that
        mode's median retries the other mode at once. A retry is judged by its own time against the preferred
        median; one that wins runs a second token and becomes the preferred mode only if both were faster (a
        single fast token, noise, no longer flips the choice for the next 16-256 tokens); a losing one waits
        ``interval`` tokens, doubled (at most :attr:`LONGEST`) and times how many times slower it was (at most
        :attr:`RETRY_MAX`): about one token in 64 spent on retries."""
        if not self.active:
            return
        if mode == self.prefer:
            est = self._estimate(mode)
            if self.times[mode] and not est / 3.0 <= seconds <= 3.0 * est:
                self.since = self.interval
            else:
                self.since += 1
            self.times[mode].append(seconds)
            return
        self.times[mode].append(seconds)
        self.since = 0
        ratio = self._estimate(mode) / max(self._estimate(self.prefer), 1e-9)
        won = max(self.times[mode]) < self._estimate(self.prefer)
        if won and not self.confirming:
            self.confirming = True                    # one fast token is not enough: retry once more
            return
        self.confirming = False
        if won:
            self.prefer, self.interval = mode, self.FIRST
        else:
            self.interval = min(min(2 * self.interval, self.LONGEST) * max(1, round(ratio)), self.RETRY_MAX)
