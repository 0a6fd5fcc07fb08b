"""Per-caller rate limits: token buckets on requests and on tokens, refilled continuously."""

from __future__ import annotations

import threading
import time


class TokenBucket:
    def __init__(self, per_minute: float, now: float, burst: float | None = None) -> None:
        self.per_minute = per_minute
        self.rate = per_minute / 60.0
        self.capacity = burst if burst is not None else per_minute
        self.level = self.capacity
        self.stamp = now

    def take(self, amount: float, now: float) -> float:
        """0 when ``amount`` was taken, else the seconds until it could be."""
        self.level = min(self.capacity, self.level + max(0.0, now - self.stamp) * self.rate)
        self.stamp = max(self.stamp, now)
        if amount > self.capacity:  # could never fit: wait for a full bucket, then it is refused again
            return max(1.0, (self.capacity - self.level) / self.rate if self.rate else 60.0)
        if self.level >= amount:
            self.level -= amount
            return 0.0
        return (amount - self.level) / self.rate


class RateLimiter:
    """A request bucket and a token bucket per caller, at the rates the caller's policy names."""

    def __init__(self) -> None:
        self._buckets: dict[tuple[str, str], TokenBucket] = {}
        self._lock = threading.Lock()

    def check(self, caller: str, tokens: int, requests_per_minute: float | None,
              tokens_per_minute: float | None) -> float:
        """0 when the request may go, else the seconds to wait (``Retry-After``). ``None``: no limit."""
        now = time.monotonic()
        with self._lock:
            wait = 0.0
            if requests_per_minute is not None:
                wait = self._bucket(caller, "requests", requests_per_minute, now).take(1, now)
            if wait == 0.0 and tokens_per_minute is not None:
                wait = self._bucket(caller, "tokens", tokens_per_minute, now).take(tokens, now)
                if wait and requests_per_minute is not None:  # give the request back: it did not run
                    self._buckets[(caller, "requests")].level += 1
            return wait

    def _bucket(self, caller: str, kind: str, per_minute: float, now: float) -> TokenBucket:
        b = self._buckets.get((caller, kind))
        if b is None or b.per_minute != per_minute:
            b = self._buckets[(caller, kind)] = TokenBucket(per_minute, now)
        return b
