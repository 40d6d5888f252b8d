"""Batch sizing for destructive work that must not starve the application's writers.

Each batch is one short write transaction. Alone, batches grow until each takes
about ``alone_target``; once the application is seen writing (on SQLite another
connection committed, on PostgreSQL a statement waited for a batch's row locks),
batches shrink to about ``shared_target``. On SQLite, whose one write lock the
application's writer must wait for, each batch is then followed by a pause at
least as long, so that the writer's busy handler (which sleeps 1, 2, 5, 10, 25
ms...) finds the lock free within a few milliseconds. After ``quiet_period`` with
no sign of the application, batches grow again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Pacer:
    width: int = 2_000
    minimum: int = 50
    maximum: int = 2_000_000
    alone_target: float = 0.2
    shared_target: float = 0.008
    alone_pause: float = 0.002
    shared_pause: float = 0.012
    quiet_period: float = 2.0
    _shared_until: float = field(default=0.0, repr=False)

    @property
    def shared(self) -> bool:
        return time.monotonic() < self._shared_until

    def others_wrote(self) -> None:
        if not self.shared:
            # Be gentle at once: the next batch must already be short.
            self.width = max(self.minimum, self.width // 8)
        self._shared_until = time.monotonic() + self.quiet_period

    def record(self, elapsed: float) -> float:
        """Adapt the width to how long the last batch held the lock; returns the pause."""
        target = self.shared_target if self.shared else self.alone_target
        ratio = target / max(elapsed, 1e-4)
        ratio = max(0.25, min(2.0, ratio))
        self.width = int(max(self.minimum, min(self.maximum, self.width * ratio)))
        if self.shared:
            return max(self.shared_pause, elapsed)
        return self.alone_pause
