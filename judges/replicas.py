"""Judge replicas: several servers of one judge model behind one client (``MEDBRIDGE_JUDGE_BASE_URL=url1,url2``).

``ReplicaSet.acquire()`` hands out the replica with the fewest requests in flight among those that are up,
each holding at most ``per_replica`` requests at once (the judge config's ``concurrency``), so N replicas
take N times the requests of one. A replica whose request fails with a retryable error (unreachable,
timed out, 5xx, an error in a 200) is marked down for a cooldown that doubles while it keeps failing
(1 s up to 30 s), counted and warned about once; the retry goes to another replica. When every replica
is down they are tried anyway (the client's retries, deadline and breaker decide). A replica that asks
for time (Retry-After) gets it without being counted as failed. One verdict cache and one judge identity
serve them all (client.py checks that every replica serves the same model before its verdicts count).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from medbridge.judges.http import JudgeHTTP

__all__ = ["Replica", "ReplicaSet"]

log = logging.getLogger(__name__)

COOLDOWN_S = 1.0
COOLDOWN_MAX_S = 30.0


@dataclass(eq=False)
class Replica:
    http: JudgeHTTP
    active: int = 0  # requests in flight now
    sent: int = 0
    answered: int = 0
    failures: int = 0
    down_until: float = 0.0
    down_streak: int = 0
    card: dict[str, Any] | None = None  # what its /v1/models says about the judge model, once checked

    @property
    def url(self) -> str:
        return self.http.public


class ReplicaSet:
    def __init__(self, https: list[JudgeHTTP], per_replica: int):
        if not https:
            raise ValueError("a judge needs at least one base URL")
        self.replicas = [Replica(http) for http in https]
        self.per_replica = per_replica
        self._changed: asyncio.Condition | None = None  # made on first use, inside the client's event loop

    def __len__(self) -> int:
        return len(self.replicas)

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(s for r in self.replicas for s in r.http.secrets)

    def scrub(self, text: str) -> str:
        for replica in self.replicas:
            text = replica.http.scrub(text)
        return text

    def _up(self, now: float) -> list[Replica]:
        return [r for r in self.replicas if r.down_until <= now]

    def another_is_up(self, replica: Replica | None = None) -> bool:
        """Is some other replica up with room for a request (so a retry need not wait)?"""
        now = time.monotonic()
        return any(r is not replica and r.active < self.per_replica for r in self._up(now))

    def _pick(self, now: float, avoid: Replica | None) -> Replica | None:
        pool = self._up(now) or self.replicas  # all down: try them anyway
        free = [r for r in pool if r.active < self.per_replica]
        if avoid is not None and len(free) > 1:
            free = [r for r in free if r is not avoid]  # a retry goes elsewhere when it can
        return min(free, key=lambda r: (r.active, r.sent)) if free else None

    async def acquire(self, avoid: Replica | None = None) -> Replica:
        """The least busy replica that is up (not ``avoid``, the one a retry just failed on, when another has room)."""
        if self._changed is None:
            self._changed = asyncio.Condition()
        async with self._changed:
            while True:
                now = time.monotonic()
                replica = self._pick(now, avoid)
                if replica is not None:
                    replica.active += 1
                    replica.sent += 1
                    return replica
                # Full: wait for a release, or for a down replica's cooldown to end.
                wakes = [r.down_until - now for r in self.replicas if r.down_until > now]
                try:
                    await asyncio.wait_for(self._changed.wait(), timeout=min(wakes) if wakes else None)
                except TimeoutError:
                    pass

    async def release(self, replica: Replica) -> None:
        assert self._changed is not None
        async with self._changed:
            replica.active -= 1
            self._changed.notify_all()

    def answered(self, replica: Replica) -> None:
        replica.answered += 1
        if replica.down_streak:
            log.info("judge replica %s answers again", replica.url)
        replica.down_streak = 0
        replica.down_until = 0.0

    def failed(self, replica: Replica, reason: str) -> None:
        """A retryable failure: the replica rests, and the retry goes elsewhere while another is up."""
        replica.failures += 1
        replica.down_streak += 1
        # The streak grows with every failed try of every question; the doubling stops at the cap.
        doublings = min(replica.down_streak - 1, 16)
        replica.down_until = time.monotonic() + min(COOLDOWN_MAX_S, COOLDOWN_S * 2**doublings)
        if len(self.replicas) > 1 and replica.down_streak == 1:
            log.warning(
                "judge replica %s failed (%s): routing around it (%d of %d replicas up)",
                replica.url,
                reason,
                len(self._up(time.monotonic())),
                len(self.replicas),
            )

    def rest(self, replica: Replica, seconds: float) -> None:
        """The replica asked for time (Retry-After): send it nothing until then; not a failure."""
        replica.down_until = max(replica.down_until, time.monotonic() + seconds)

    def summary(self) -> list[dict[str, Any]]:
        return [
            {"url": r.url, "sent": r.sent, "answered": r.answered, "failures": r.failures} for r in self.replicas
        ]

    async def aclose(self) -> None:
        for replica in self.replicas:
            await replica.http.aclose()
