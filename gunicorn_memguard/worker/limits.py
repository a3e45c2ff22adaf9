"""A worker's limits and its policy: built from the settings and what the master resolved, and
re-synced when the master re-resolves percentage limits (the worker count changed)."""

from __future__ import annotations

import random
from collections.abc import Callable

from ..policy import Growth, build_policy
from ..settings import Settings
from ..shared.limits import SharedLimits
from ..units import format_size


class WorkerLimits:
    def __init__(
        self, settings: Settings, shared: SharedLimits | None, born: float, allowance: Callable[[], int] | None = None
    ) -> None:
        self.shared = shared
        self._allowance = allowance if settings.max_total_memory is not None else None
        # The master resolved the limits (percentages need the worker count) before this fork;
        # byte limits from the settings stand in if it could not.
        self._seen = shared.limits() if shared is not None else (None, None)
        soft = self._seen[0] or (settings.max_memory if isinstance(settings.max_memory, int) else None)
        hard = self._seen[1] or (settings.hard_max_memory if isinstance(settings.hard_max_memory, int) else None)
        growth = None
        if settings.max_growth is not None:
            growth = Growth(
                settings.max_growth, settings.growth_window, settings.growth_grace, settings.growth_interval
            )
        self.policy, self.soft = build_policy(
            metric=settings.metric, soft=soft, hard=hard, jitter=settings.jitter, min_lifetime=settings.min_lifetime,
            born=born, rng=random.Random(), growth=growth,  # gunicorn reseeds per worker: jitter differs
            budget=self._allowance is not None,
        )  # fmt: skip
        self._jitter_factor = self.soft / soft if self.soft and soft else 1.0

    @property
    def breaker_limit(self) -> int | None:
        """The limit a fresh worker's size is compared with for the crash-loop test: the lowest that
        retires it, its share of a server-wide budget included (a budget too small for fresh
        workers would otherwise fork one after another)."""
        share = self.policy.allowance.limit if self.policy.allowance is not None else 0
        limits = [x for x in (self.soft or self.policy.ceiling, share or None) if x]
        return min(limits) if limits else None

    def sync_allowance(self) -> None:
        """Before every check: the share of the server-wide budget the master last set (one read of
        the shared scoreboard, only with ``MEMGUARD_MAX_TOTAL_MEMORY``)."""
        if self._allowance is not None:
            self.policy.allow(self._allowance())

    def sync(self) -> str | None:
        """Take limits the master re-resolved; returns a line saying what changed, or None."""
        if self.shared is None:
            return None
        soft, hard = self.shared.limits()
        if (soft, hard) == self._seen:
            return None
        self._seen = (soft, hard)
        was, self.soft = self.soft, int(soft * self._jitter_factor) if soft else None
        self.policy.retarget(self.soft, hard if hard is not None else soft)
        return (
            f"now has limit {_show(self.soft)} (was {_show(was)}), ceiling {_show(self.policy.ceiling)}: "
            "the master re-resolved them"
        )


def _show(size: int | None) -> str:
    return "none" if size is None else format_size(size)
