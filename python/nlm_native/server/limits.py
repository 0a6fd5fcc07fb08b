"""Per-caller rate limits: token buckets on requests and on tokens, refilled continuously."""

from __future__ import annotations

import threading
import time


class TokenBucket:
    def __init__(self, per_minute: float, burst: float | None = None) -> None:
        self.rate = per_minute / 60.0
        self.capacity = burst if burst is not None else per_minute
        self.level = self.capacity
        self.stamp = time.monotonic()

    def take(self, amount: float, now: float) -> float:
        """0 when ``amount`` was taken, else the seconds until it could be."""
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now
        if amount > self.capacity:  # could never fit: wait for a full bucket, then it is refused again
            return max(1.0, (self.capacity - self.level) / self.rate if self.rate else 60.0)
        if self.level >= amount:
            self.level -= amount
            return 0.0
        return (amount - self.level) / self.rate


class RateLimiter:
    def __init__(self, requests_per_minute: float | None, tokens_per_minute: float | None) -> None:
        self.rpm, self.tpm = requests_per_minute, tokens_per_minute
        self._buckets: dict[tuple[str, str], TokenBucket] = {}
        self._lock = threading.Lock()

    def check(self, caller: str, tokens: int) -> float:
        """0 when the request may go, else the seconds to wait (``Retry-After``)."""
        now = time.monotonic()
        with self._lock:
            wait = 0.0
            if self.rpm is not None:
                wait = self._bucket(caller, "requests", self.rpm).take(1, now)
            if wait == 0.0 and self.tpm is not None:
                wait = self._bucket(caller, "tokens", self.tpm).take(tokens, now)
                if wait and self.rpm is not None:  # give the request back: it did not run
                    self._buckets[(caller, "requests")].level += 1
            return wait

    def _bucket(self, caller: str, kind: str, per_minute: float) -> TokenBucket:
        b = self._buckets.get((caller, kind))
        if b is None:
            b = self._buckets[(caller, kind)] = TokenBucket(per_minute)
        return b
