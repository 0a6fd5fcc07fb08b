"""Prometheus metrics of one server (its own registry), refreshed from the engine on each scrape."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("nlm_requests", "HTTP requests by endpoint and status", ["endpoint", "status"],
                                registry=r)
        self.prompt_tokens = Counter("nlm_prompt_tokens", "Prompt tokens of finished requests", registry=r)
        self.completion_tokens = Counter("nlm_completion_tokens", "Generated tokens of finished requests",
                                         registry=r)
        self.cached_tokens = Counter("nlm_cached_tokens", "Prompt tokens the prefix cache supplied", registry=r)
        self.ttft = Histogram("nlm_time_to_first_token_seconds", "Time to the first streamed chunk",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("nlm_inter_token_latency_seconds", "Time between streamed chunks",
                             buckets=LATENCY_BUCKETS, registry=r)
        self.e2e = Histogram("nlm_request_latency_seconds", "Time from request to its last byte",
                             buckets=LATENCY_BUCKETS, registry=r)
        g = {name: Gauge(f"nlm_{name}", doc, registry=r) for name, doc in (
            ("queue_depth", "Requests waiting to start"), ("running", "Requests decoding"),
            ("prefilling", "Requests whose prompt is being computed"), ("preemptions", "Preemptions so far"),
            ("kv_blocks_used", "KV pool blocks in use (requests and the prefix cache)"),
            ("kv_blocks_free", "KV pool blocks free"), ("kv_blocks_cached", "KV blocks the prefix cache keeps"),
            ("prefix_cache_hits", "Admissions that found a cached prefix"),
            ("prefix_cache_misses", "Admissions that found none"))}
        self.gauges = g

    def observe_usage(self, usage: dict[str, Any] | None) -> None:
        if not usage:
            return
        self.prompt_tokens.inc(usage.get("prompt_tokens", 0))
        self.completion_tokens.inc(usage.get("completion_tokens", 0))
        self.cached_tokens.inc((usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0))

    def render(self, stats: Any, cache: Any) -> bytes:
        g = self.gauges
        g["queue_depth"].set(stats.waiting)
        g["running"].set(stats.running)
        g["prefilling"].set(stats.prefilling)
        g["preemptions"].set(stats.preempted)
        g["kv_blocks_used"].set(stats.kv_blocks_used)
        g["kv_blocks_free"].set(stats.kv_blocks_free)
        if cache is not None:
            g["kv_blocks_cached"].set(cache.reclaimable_blocks())
            g["prefix_cache_hits"].set(cache.hits)
            g["prefix_cache_misses"].set(cache.misses)
        return generate_latest(self.registry)
