"""Which requests run in the next step, and with how many tokens.

Each step has a token budget (``max_batch_tokens``). Every running sample gets its one decode
token first, so streams never stall; what is left goes to prompts in chunks (chunked prefill),
those already started first, then waiting requests in priority order as long as the KV pool has
blocks for them. A waiting request's priority rises one level every ``aging_s`` seconds it waits,
so ``low`` requests are never starved. When the pool runs out mid-step, the engine asks
:meth:`Scheduler.victim` whom to preempt: the lowest priority, most recently arrived request
holding cache blocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .request import Request, Status


class QueueFull(RuntimeError):
    """The engine's waiting queue is full; try again later."""


@dataclass(frozen=True)
class SchedulerConfig:
    max_batch_tokens: int = 256  # tokens per step: decode tokens plus prompt chunks
    max_seqs: int = 64  # samples decoding at once
    max_waiting: int = 1024  # requests waiting to start; more raise QueueFull
    aging_s: float = 5.0  # a waiting request rises one priority level per aging_s seconds

    def __post_init__(self) -> None:
        for name in ("max_batch_tokens", "max_seqs", "max_waiting"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if not (isinstance(self.aging_s, int | float) and self.aging_s > 0):
            raise ValueError(f"aging_s must be a positive number of seconds, got {self.aging_s!r}")


@dataclass
class Plan:
    """One step: every running request decodes; ``prefill`` gives (request, tokens) chunks."""

    decode: list[Request] = field(default_factory=list)
    prefill: list[tuple[Request, int]] = field(default_factory=list)
    admit: list[Request] = field(default_factory=list)  # start these (they are in prefill too)


class Scheduler:
    def __init__(self, config: SchedulerConfig, *, block_tokens: int) -> None:
        self.config = config
        self.bt = block_tokens
        self.waiting: list[Request] = []
        self.prefilling: list[Request] = []
        self.running: list[Request] = []

    # --- queues -----------------------------------------------------------------------------

    def add(self, req: Request) -> None:
        self.waiting.append(req)

    def remove(self, req: Request) -> None:
        for q in (self.waiting, self.prefilling, self.running):
            if req in q:
                q.remove(req)

    def holding(self) -> list[Request]:
        """Requests with blocks in the pool."""
        return self.prefilling + self.running

    def __len__(self) -> int:
        return len(self.waiting) + len(self.prefilling) + len(self.running)

    def effective_priority(self, req: Request, now: float) -> float:
        return float(req.priority) - (now - req.arrival) / self.config.aging_s

    # --- the step -----------------------------------------------------------------------------

    def blocks_needed(self, req: Request) -> int:
        """Blocks a request needs to start: its prompt, each sample's own tokens, and a block per sample
        for the copy of a shared partial block and the next token."""
        p = len(req.prompt)
        shared = p // self.bt
        if not req.samples:
            return math.ceil(p / self.bt) + req.params.samples
        return math.ceil(p / self.bt) + sum(
            math.ceil((p + len(s.token_ids)) / self.bt) - shared + 1 for s in req.live_samples)

    def schedule(self, free_blocks: int, now: float) -> Plan:
        cfg = self.config
        plan = Plan(decode=list(self.running))
        budget = cfg.max_batch_tokens
        seqs = 0
        for r in self.running:
            n = len(r.live_samples)
            budget -= n
            seqs += n
        # blocks the running samples may take this step, and the prompts already promised
        free = free_blocks - seqs
        for r in self.prefilling:
            left = sum(w.left for w in r.work)
            free -= math.ceil(left / self.bt) + (r.params.samples if not r.samples else 0)
            take = min(left, max(budget, 0))
            if take > 0:
                plan.prefill.append((r, take))
                budget -= take
            seqs += r.params.samples if not r.samples else len(r.live_samples)
        self.waiting.sort(key=lambda r: (self.effective_priority(r, now), r.arrival))
        for r in list(self.waiting):
            if budget <= 0:
                break
            samples = r.params.samples if not r.samples else len(r.live_samples)
            need = self.blocks_needed(r)
            if self.holding() and (need > free or seqs + samples > cfg.max_seqs):
                break  # in priority order: nothing behind it jumps the queue (alone, it always starts)
            free -= need
            seqs += samples
            self.waiting.remove(r)
            self.prefilling.append(r)
            r.status = Status.PREFILLING
            plan.admit.append(r)
            total = len(r.prompt) + sum(max(len(s.token_ids) - 1, 0) for s in r.live_samples)
            take = min(total, budget)
            plan.prefill.append((r, take))
            budget -= take
        return plan

    def promote(self, req: Request) -> None:
        """A request whose cache is complete decodes from now on."""
        if req in self.prefilling:
            self.prefilling.remove(req)
        req.status = Status.RUNNING
        self.running.append(req)

    def victim(self) -> Request | None:
        """Whom to preempt when the pool runs out: the lowest priority, most recent request holding blocks."""
        held = self.holding()
        if len(held) < 2:
            return None
        return max(held, key=lambda r: (int(r.priority), r.arrival))

    def preempt(self, req: Request) -> None:
        """Back to waiting (its blocks were freed); it resumes by recomputing its cache."""
        self.remove(req)
        req.status = Status.WAITING
        req.preemptions += 1
        self.waiting.append(req)
