"""Per-request rows (``INFERENCE_METRICS``) written to the SQL store in batches, off the requests' path:
every ``batch`` rows or ``interval`` seconds, and at shutdown. A failed write never fails a request; it
is logged and counted (``errors``), and its rows are dropped."""

from __future__ import annotations

import datetime as dt
import logging
import threading
from typing import Any

from ..storage import SqlStore

log = logging.getLogger("nlm_native.server")


class MetricsSink:
    def __init__(self, url: str, *, batch: int = 100, interval: float = 10.0) -> None:
        self.store = SqlStore(url)
        self.batch, self.interval = batch, interval
        self.written = 0
        self.errors = 0
        self._rows: list[dict[str, Any]] = []
        self._cv = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="nlm-metrics-writer", daemon=True)
        self._thread.start()

    def record(self, request_id: str, key_id: str, model: str, endpoint: str, status: int, latency_s: float,
               usage: dict[str, Any] | None = None, ttft_s: float | None = None) -> None:
        u = usage or {}
        row = {"REQUEST_ID": request_id[:64], "TIME": dt.datetime.now(dt.UTC).replace(tzinfo=None),
               "KEY_ID": key_id[:32], "MODEL": model[:128], "ENDPOINT": endpoint, "STATUS": status,
               "PROMPT_TOKENS": u.get("prompt_tokens"), "COMPLETION_TOKENS": u.get("completion_tokens"),
               "CACHED_TOKENS": (u.get("prompt_tokens_details") or {}).get("cached_tokens"),
               "TTFT_MS": None if ttft_s is None else ttft_s * 1e3, "LATENCY_MS": latency_s * 1e3}
        with self._cv:
            self._rows.append(row)
            if len(self._rows) >= self.batch:
                self._cv.notify()

    def flush(self) -> None:
        with self._cv:
            rows, self._rows = self._rows, []
        self._write(rows)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join()
        self.flush()
        self.store.close()

    def _write(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        try:
            self.store.put_metrics(rows)
            self.written += len(rows)
        except Exception as e:  # any store failure (StoreError or a driver's own): never a request's problem
            self.errors += 1
            log.warning("request metrics not stored (%d rows): %s", len(rows), e)

    def _run(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._closed or len(self._rows) >= self.batch, timeout=self.interval)
                if self._closed:
                    return
                rows, self._rows = self._rows, []
            self._write(rows)
