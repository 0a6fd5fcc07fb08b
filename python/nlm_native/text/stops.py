"""Stop strings matched on text, across token boundaries, with hold-back for streaming."""

from __future__ import annotations

from collections.abc import Sequence


class StopMatcher:
    """Feeds on text deltas; releases only text that cannot be part of a stop string.

    ``feed(delta)`` returns ``(safe_text, stopped)``. While the end of the text could be
    the beginning of a stop string, that tail is held back; once a stop string appears,
    the text before it is released, the stop string and everything after it are dropped,
    and ``stopped`` is True. ``flush()`` releases the held tail at the end of generation.

    Invariant (why searching from the released position is enough): the released text
    never contains the start of a stop string that could still complete.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self._longest = max((len(s) for s in self.stops), default=0)
        self.text = ""  # all text fed (up to the stop, once stopped)
        self.released = 0  # length of the prefix of ``text`` given out
        self.stopped: str | None = None  # the stop string that matched

    def feed(self, delta: str) -> tuple[str, bool]:
        if self.stopped is not None:
            return "", True
        self.text += delta
        if not self.stops:
            return self._release(len(self.text)), False
        start = self.released
        hit, which = -1, None
        for s in self.stops:
            i = self.text.find(s, start)
            if i >= 0 and (hit < 0 or i < hit):
                hit, which = i, s
        if which is not None:
            self.stopped = which
            out = self._release(hit)
            self.text = self.text[:hit]
            return out, True
        return self._release(len(self.text) - self._held_tail()), False

    def flush(self) -> str:
        return self._release(len(self.text))

    def _held_tail(self) -> int:
        """Length of the longest suffix of the unreleased text that is a proper prefix of a stop string."""
        tail = self.text[max(self.released, len(self.text) - self._longest + 1):]
        for k in range(len(tail), 0, -1):
            suffix = tail[-k:]
            if any(s.startswith(suffix) for s in self.stops):
                return k
        return 0

    def _release(self, upto: int) -> str:
        out = self.text[self.released:upto]
        self.released = max(self.released, upto)
        return out
