"""What to read for a sample: one cheap RSS read, or the exact USS/PSS when a limit is in reach.

RSS is an upper bound of USS and PSS, so while it clears every limit nothing else is read. An
exact read (``/proc/self/smaps_rollup``) costs 0.4–17 ms, so from the request path it happens at
most once a second (every 100 ms within 5 % of a limit) unless the estimate — the last exact
value plus the RSS growth since, since the new pages of a growing worker are private — says a limit
may have been crossed.
"""

from __future__ import annotations

from ..policy import Sample, WorkerPolicy
from ..probes.memory import MemoryProbe

EXACT_READ_MIN_GAP = 1.0
# Within this share of a limit, at most this long between exact reads: the estimate cannot see
# pages shared with the master turning private (refcount writes to inherited objects), so near a
# limit it is trusted for 100 ms at most (an exact read there costs ~1 ms: ~1 % of a worker's time).
NEAR = 0.95
NEAR_GAP = 0.1


class Reader:
    def __init__(self, metric: str, probe: MemoryProbe | None = None) -> None:
        self.metric = metric
        self.probe = probe or MemoryProbe()
        self.rss = 0  # the last RSS read
        self._last_exact = -EXACT_READ_MIN_GAP
        self._last_exact_rss = 0
        self._last_exact_value = 0

    def sample(self, now: float, policy: WorkerPolicy, from_timer: bool, want_exact: bool = False) -> Sample | None:
        """A sample for the policy, or None when the last exact read is recent and the limits far."""
        rss = self.rss = self.probe.rss()
        if self.metric == "rss":
            return Sample(now, rss)
        wants_exact = from_timer and (want_exact or policy.wants_exact(now))
        if policy.clears(rss) and not wants_exact:
            return Sample(now, rss, exact=False)
        estimate, floor = self.estimate(rss), policy.floor or 0
        gap = NEAR_GAP if estimate >= NEAR * floor else EXACT_READ_MIN_GAP
        if from_timer or now - self._last_exact >= gap or not policy.clears(estimate):
            return self.exact(now, rss)
        return None

    def exact(self, now: float, rss: int | None = None) -> Sample:
        self._last_exact, self._last_exact_rss = now, self.rss if rss is None else rss
        self._last_exact_value = self.probe.read(self.metric)
        return Sample(now, self._last_exact_value)

    def estimate(self, rss: int | None = None) -> int:
        """The metric now, estimated without reading smaps."""
        if self.metric == "rss":
            return self.rss if rss is None else rss
        rss = self.rss if rss is None else rss
        return self._last_exact_value + max(0, rss - self._last_exact_rss)
