"""The engine: one thread that owns the model's batch loop, and the streams requests read from.

Every step is schedule -> execute -> update:

* schedule: :class:`~nlm_native.engine.scheduler.Scheduler` picks one decode token per running
  sample plus prompt chunks under the step's token budget, admitting requests by free KV blocks;
* execute: one :meth:`Model.forward` over that batch. When the pool runs out, the lowest
  priority, most recent request is preempted (its blocks freed, its cache recomputed later)
  and the step retried; a request alone in the pool ends its longest sample instead;
* update: logits come back as one array; every sample's token is chosen in one sampler call
  (:func:`~nlm_native.sampling.choose_rows`), then detokenized, matched against stops and
  streamed.

The kernels are batch-invariant (every row's arithmetic is the same whatever else is in the
batch), and each sample draws from its own seeded generator, so a request gives the same tokens
alone or in a busy batch, and after a preemption.
"""

from __future__ import annotations

import collections
import itertools
import logging
import queue
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..core import Batch, KVCacheFull, Model
from ..sampling import Constraint, SamplingParams, choose_rows, logprobs, spawn_rngs
from ..text import Tokenizer
from .cache import BlockEvent, PrefixCache
from .outputs import StreamChunk
from .request import Priority, Request, SampleState, Status, TokenUpdate, Work
from .scheduler import Plan, QueueFull, Scheduler, SchedulerConfig

log = logging.getLogger("nlm_native.engine")


TPS_WINDOW_S = 10.0  # EngineStats.tokens_per_second: tokens generated over this many seconds

class RequestTimeout(TimeoutError):
    """A request ran past its timeout; what it produced until then was delivered."""


class EngineClosed(RuntimeError):
    """The engine was closed before the request finished."""


@dataclass(frozen=True)
class RequestMetrics:
    """Timings of one finished request, in seconds."""

    request_id: str
    prompt_tokens: int
    completion_tokens: int
    time_to_first_token: float | None
    inter_token_latencies: list[float]
    latency: float
    preemptions: int
    cached_tokens: int = 0  # prompt tokens the prefix cache supplied


@dataclass(frozen=True)
class EngineStats:
    """A snapshot of the engine (for metrics)."""

    running: int  # requests decoding
    prefilling: int  # requests whose prompt is being computed
    waiting: int  # requests not started (or preempted, waiting to resume)
    preempted: int  # preemptions so far
    kv_blocks_used: int
    kv_blocks_free: int
    steps: int
    tokens_per_second: float  # generated tokens over the last few seconds
    finished: int  # requests finished so far
    recent: list[RequestMetrics] = field(default_factory=list)  # the last finished requests, oldest first


class RequestStream(Iterator[StreamChunk]):
    """The chunks of one request as the engine produces them (``index`` tells samples apart).

    Iterating blocks until the next chunk; the iterator ends when every sample has finished. It
    raises :class:`RequestTimeout` past the request's timeout and any error the request met.
    ``close()`` (or dropping the stream) aborts the request: its blocks are freed within one step.
    """

    def __init__(self, engine: Engine, request_id: str) -> None:
        self.request_id = request_id
        self._engine = engine
        self._q: queue.SimpleQueue[list[StreamChunk] | BaseException | None] = queue.SimpleQueue()
        self._buf: collections.deque[StreamChunk] = collections.deque()
        self._done = False
        self._notify: Callable[[], None] | None = None  # called (from the engine thread) on every item
        self._ended: threading.Event | None = None
        self.metrics: RequestMetrics | None = None  # set when the request has finished

    def _put(self, item: list[StreamChunk] | BaseException | None) -> None:
        self._q.put(item)
        notify = self._notify
        if notify is not None:
            notify()

    def __iter__(self) -> RequestStream:
        return self

    def __next__(self) -> StreamChunk:
        chunk = self.poll(block=True)
        assert chunk is not None
        return chunk

    def poll(self, *, block: bool) -> StreamChunk | None:
        """The next chunk; ``None`` when none is there yet and ``block`` is false. Raises
        ``StopIteration`` at the end, or the request's error."""
        while not self._buf:
            if self._done:
                raise StopIteration
            try:
                item = self._q.get(block=block)
            except queue.Empty:
                return None
            if item is None:
                self._done = True
            elif isinstance(item, BaseException):
                self._done = True
                raise item
            else:
                self._buf.extend(item)
        return self._buf.popleft()

    @property
    def finished(self) -> bool:
        return self._done

    def close(self, *, wait: bool = True) -> None:
        """Abort the request if it is still running; with ``wait``, return once its blocks are freed
        (within one engine step)."""
        if not self._done:
            self._done = True
            self._engine.abort(self.request_id)
        if wait and self._ended is not None and threading.current_thread() is not self._engine._thread:
            self._ended.wait()

    def __del__(self) -> None:
        try:
            self.close(wait=False)
        except Exception:  # interpreter shutdown
            pass


class Engine:
    """Many concurrent requests over one model, batched step by step by one engine thread.

    ``submit`` is thread-safe and returns a :class:`RequestStream` at once; bad requests raise
    ``ValueError`` there, and a full waiting queue raises :class:`QueueFull`.
    """

    _ids = itertools.count()

    def __init__(self, model: Model, tokenizer: Tokenizer, *, config: SchedulerConfig | None = None,
                 eog_ids: frozenset[int] | None = None, recent: int = 256, cache: PrefixCache | None = None
                 ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config or SchedulerConfig()
        self.scheduler = Scheduler(self.config, block_tokens=model.block_tokens)
        self.cache = cache
        eog = tokenizer.end_of_generation_ids if eog_ids is None else eog_ids
        self._update = TokenUpdate(tokenizer, eog)
        self._eog = np.array(sorted(t for t in eog if t < model.n_vocab), dtype=np.int64)
        self._cv = threading.Condition()
        self._inbox: list[Request] = []
        self._aborts: set[str] = set()
        self._requests: dict[str, Request] = {}
        self._thread: threading.Thread | None = None
        self._closed = False
        self._steps = 0
        self._preempted = 0
        self._finished = 0
        self._generated: collections.deque[tuple[float, int]] = collections.deque()
        self._recent: collections.deque[RequestMetrics] = collections.deque(maxlen=recent)
        self._logits = np.empty((0, model.n_vocab), dtype=np.float32)
        self.step_seconds = 0.0  # time in steps, and of that outside Model.forward (for the bench)
        self.host_seconds = 0.0

    # --- the interface --------------------------------------------------------------------------

    def check(self, prompt: Sequence[int], params: SamplingParams) -> list[int]:
        """The prompt's ids, after checking that the request can run here (raises ``ValueError``)."""
        model = self.model
        ids = [int(t) for t in prompt]
        if not ids:
            raise ValueError("the prompt is empty")
        n_vocab = model.n_vocab
        for t in ids:
            if not 0 <= t < n_vocab:
                raise ValueError(f"prompt token id {t} is outside the vocabulary (size {n_vocab})")
        if len(ids) >= model.n_ctx:
            raise ValueError(f"the prompt has {len(ids)} tokens; the context holds {model.n_ctx} (n_ctx), "
                             "leaving no room to generate")
        bt = model.block_tokens
        pool = model.kv_blocks * bt
        need = -(-len(ids) // bt) + params.samples
        if need > model.kv_blocks:
            raise ValueError(f"the prompt has {len(ids)} tokens and {params.samples} sample(s); the KV pool holds "
                             f"{pool} tokens ({model.kv_blocks} blocks of {bt}), too few for it even alone")
        params.check_vocab(n_vocab)
        return ids

    def submit(self, prompt_ids: Sequence[int], params: SamplingParams | None = None, *,
               request_id: str | None = None, priority: str | Priority = "normal", timeout: float | None = None,
               constraint: Callable[[], Constraint] | None = None,
               on_finish: Callable[[list[int]], None] | None = None) -> RequestStream:
        """Queue a request; its chunks arrive on the returned stream.

        ``on_finish`` is called on the engine thread, before the stream ends, with the prompt and the
        first sample's tokens when the request finishes without an error (it must be quick: sessions
        record their conversation with it).

        ``constraint`` makes each sample's structured-output matcher (``params.grammar`` does
        it for you through :meth:`LLM`). ``timeout`` (seconds from now) ends the request with
        :class:`RequestTimeout`.
        """
        params = params or SamplingParams()
        ids = self.check(prompt_ids, params)
        prio = Priority.parse(priority)
        if timeout is not None and not (isinstance(timeout, int | float) and timeout > 0):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        rid = request_id if request_id is not None else f"req-{next(self._ids)}-{uuid.uuid4().hex[:8]}"
        if not isinstance(rid, str) or not rid:
            raise ValueError("request_id must be a non-empty string")
        stream = RequestStream(self, rid)
        budget = self.model.n_ctx - len(ids)
        max_new = budget if params.max_tokens is None else min(params.max_tokens, budget)
        ref = weakref.ref(stream)

        def sink(item: list[StreamChunk] | BaseException | None) -> None:
            s = ref()
            if s is not None:
                s._put(item)

        req = Request(rid, ids, params, prio, sink, max_new, constraint, stream_ref=ref, on_finish=on_finish)
        stream._ended = req.ended
        req.deadline = None if timeout is None else req.arrival + timeout
        with self._cv:
            if self._closed:
                raise EngineClosed("the engine is closed")
            if rid in self._requests:
                raise ValueError(f"request_id {rid!r} is already in use")
            if len(self.scheduler.waiting) + len(self._inbox) >= self.config.max_waiting:
                raise QueueFull(f"the waiting queue is full ({self.config.max_waiting} requests); retry later")
            self._requests[rid] = req
            self._inbox.append(req)
            self._start_thread()
            self._cv.notify()
        return stream

    def abort(self, request_id: str) -> None:
        """Stop a request; its blocks are freed within one step. Unknown or finished ids are ignored."""
        with self._cv:
            if request_id in self._requests:
                self._aborts.add(request_id)
                self._cv.notify()

    def stats(self) -> EngineStats:
        with self._cv:
            now = time.monotonic()
            self._trim_generated(now)
            window = min(TPS_WINDOW_S, now - self._generated[0][0]) if self._generated else 0.0
            n = sum(c for _, c in self._generated)
            sch = self.scheduler
            free = self.model.kv_free_blocks
            return EngineStats(
                running=len(sch.running), prefilling=len(sch.prefilling),
                waiting=len(sch.waiting) + len(self._inbox), preempted=self._preempted,
                kv_blocks_used=self.model.kv_blocks - free, kv_blocks_free=free, steps=self._steps,
                tokens_per_second=n / window if window > 0 else 0.0, finished=self._finished,
                recent=list(self._recent))

    def _trim_generated(self, now: float) -> None:
        """Keep the last 10 s of (time, tokens) steps: the throughput window (the lock held)."""
        while self._generated and self._generated[0][0] < now - TPS_WINDOW_S:
            self._generated.popleft()

    def close(self) -> None:
        """Stop the engine thread; unfinished requests end with :class:`EngineClosed`."""
        with self._cv:
            self._closed = True
            self._cv.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        if self.cache is not None and hasattr(self.cache, "clear"):
            self.cache.clear()  # its kept blocks go back to the pool

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the loop -------------------------------------------------------------------------------

    def _start_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="nlm-engine", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._closed and not self._inbox and not self._aborts and not len(self.scheduler):
                    self._cv.wait()
                if self._closed:
                    break
                inbox, self._inbox = self._inbox, []
                aborts, self._aborts = self._aborts, set()
            for req in inbox:
                self.scheduler.add(req)
            for rid in aborts:
                req = self._requests.get(rid)
                if req is not None:
                    self._end(req, None)
            try:
                self.step()
            except Exception as e:  # a fault of the step, not of one request (NumericError): fail its batch
                for req in self.scheduler.holding():
                    self._end(req, e)
        for req in self.scheduler.holding() + list(self.scheduler.waiting) + self._inbox:
            self._end(req, EngineClosed("the engine was closed before the request finished"))

    def step(self) -> None:
        """One schedule -> execute -> update step (the engine thread calls this)."""
        t0 = time.perf_counter()
        now = time.monotonic()
        for req in [r for r in self.scheduler.holding() + self.scheduler.waiting
                    if r.deadline is not None and now > r.deadline]:
            self._end(req, RequestTimeout(f"request {req.id} ran past its timeout"))
        for req in [r for r in self.scheduler.waiting if r.max_new == 0]:
            self.scheduler.remove(req)
            n = req.params.n
            req.sink([StreamChunk(i, "", [], [] if req.params.logprobs else None, "length") for i in range(n)])
            self._end(req, None)
        plan = self.scheduler.schedule(self.model.kv_free_blocks + self._reclaimable(), now)
        for req in plan.admit:
            self._start(req)
        entries = self._entries(plan)
        if not entries:
            return
        t_fwd = time.perf_counter()
        out, entries = self._execute(entries)
        t_upd = time.perf_counter()
        self._apply(entries, out)
        t1 = time.perf_counter()
        self._steps += 1
        self.step_seconds += t1 - t0
        self.host_seconds += (t_fwd - t0) + (t1 - t_upd)

    # --- schedule -> entries ----------------------------------------------------------------------

    def _start(self, req: Request) -> None:
        """An admitted request gets a sequence for its prompt (from the cache, holding a prefix, on a hit)."""
        hit = self.cache.lookup(self.model, req.prompt) if self.cache is not None else None
        if hit is not None:
            seq, n = hit
            if not 0 <= n < len(req.prompt) or self.model.sequence_length(seq) != n:
                self.model.free(seq)
                raise RuntimeError(f"prefix cache: lookup gave sequence {seq} with {n} of {len(req.prompt)} "
                                   "prompt tokens, which does not hold them")
        else:
            seq, n = self.model.new_sequence(), 0
        req.root = seq
        req.seqs.add(seq)
        req.cached_tokens = n
        req.work = [Work(seq, req.prompt[n:], n, logits=not req.samples)]

    def _entries(self, plan: Plan) -> list[_Entry]:
        entries: list[_Entry] = []
        for req in plan.decode:
            for s in req.live_samples:
                entries.append(_Entry(req, s.last, s.position, s.seq, True, sample=s))
        for req, n in plan.prefill:
            for w in req.work:
                if n <= 0:
                    break
                take = min(n, w.left)
                for i in range(w.done, w.done + take):
                    last = i == len(w.tokens) - 1
                    entries.append(_Entry(req, w.tokens[i], w.start + i, w.seq, last and w.logits, work=w))
                n -= take
        return entries

    def _execute(self, entries: list[_Entry]) -> tuple[np.ndarray, list[_Entry]]:
        """Forward the entries; on a full pool, preempt (or end a sample) and retry without them."""
        while True:
            batch = Batch()
            for e in entries:
                batch.add(e.token, e.position, e.seq, e.logits)
            n_rows = sum(1 for e in entries if e.logits)
            if self._logits.shape[0] < n_rows:
                self._logits = np.empty((max(n_rows, 2 * self._logits.shape[0]), self.model.n_vocab), np.float32)
            try:
                out = self.model.forward(batch, out=self._logits[:n_rows]) if entries else self._logits[:0]
                return out, entries
            except KVCacheFull:
                gone = self._make_room()
                entries = [e for e in entries if e.req not in gone and (e.sample is None or e.sample.live)]

    def _reclaimable(self) -> int:
        return int(self.cache.reclaimable_blocks()) if hasattr(self.cache, "reclaimable_blocks") else 0

    def _make_room(self) -> set[Request]:
        """Free blocks: the cache's kept blocks first, then preempt the scheduler's victim, or, alone, end
        the longest sample ("length")."""
        if self._reclaimable() > 0 and self.cache.evict(self.model, 8) > 0:  # type: ignore[union-attr]
            return set()
        victim = self.scheduler.victim()
        if victim is not None:
            self._free(victim)
            victim.work = []
            self.scheduler.preempt(victim)
            self._preempted += 1
            return {victim}
        held = self.scheduler.holding()
        if not held:
            raise KVCacheFull("the KV pool is full and no request holds blocks")
        req = held[0]
        live = req.live_samples
        if req.status is not Status.RUNNING or not live:
            self._end(req, KVCacheFull(f"request {req.id}: the KV pool ({self.model.kv_blocks} blocks) "
                                       "cannot hold its cache even alone"))
            return {req}
        s = max(live, key=lambda v: (len(v.token_ids), v.index))
        req.sink([self._update.finish(req, s, "length", None)])
        self._free_sample(req, s)
        if not req.live_samples:
            self._end(req, None)
            return {req}
        return set()

    # --- update -----------------------------------------------------------------------------------

    def _apply(self, entries: list[_Entry], out: np.ndarray) -> None:
        # the work done: progress, positions; which samples take which logits row
        takers: list[tuple[Request, SampleState, int]] = []
        prefilling: dict[int, Request] = {}  # requests with prompt work in this step, in entry order
        row = 0
        for e in entries:
            if e.sample is not None:
                e.sample.position += 1
                takers.append((e.req, e.sample, row))
            else:
                w = e.work
                assert w is not None
                w.done += 1
                prefilling.setdefault(id(e.req), e.req)
                if e.logits:
                    e.req.samples = self._update.new_samples(e.req, self.model.n_vocab,
                                                             spawn_rngs(e.req.params.seed, e.req.params.samples))
                    takers.extend((e.req, s, row) for s in e.req.samples)
            row += e.logits
        for req in prefilling.values():  # once per request, not per entry
            if all(w.left == 0 for w in req.work):
                self._prefilled(req)
        if takers:
            self._sample(takers, out)

    def _prefilled(self, req: Request) -> None:
        """The request's pending work is in the cache: fork its samples, then decode."""
        if req.root >= 0 and self.cache is not None:
            self.cache.on_event(self.model, BlockEvent("prefilled", req.id, req.root, tuple(req.prompt)))
        if req.root >= 0:
            live = req.live_samples
            p = len(req.prompt)
            work = []
            for i, s in enumerate(live):
                s.seq = req.root if i == len(live) - 1 else self.model.fork(req.root)
                req.seqs.add(s.seq)
                s.position = p + max(len(s.token_ids) - 1, 0)
                if len(s.token_ids) > 1:  # after a preemption: each sample's own tokens, recomputed
                    work.append(Work(s.seq, s.token_ids[:-1], p, logits=False))
            req.root = -1
            if work:
                req.work = work
                return
        req.work = []
        self.scheduler.promote(req)

    def _sample(self, takers: list[tuple[Request, SampleState, int]], out: np.ndarray) -> None:
        rows = np.fromiter((r for _, _, r in takers), dtype=np.int64, count=len(takers))
        nt = self.model.n_threads
        # log-probabilities are of the raw rows: those rows are read before processing changes them
        want = sorted({int(rows[j]) for j, (req, _, _) in enumerate(takers) if req.want_logprobs})
        raw: dict[int, tuple[np.ndarray, float, list[tuple[int, float]]]] = {}
        if want:
            k = max(req.params.top_logprobs for req, _, _ in takers if req.want_logprobs)
            sel = out[want]
            ids, top, lse = logprobs(sel, k, n_threads=nt)
            for i, r in enumerate(want):
                pairs = [(int(a), float(b)) for a, b in zip(ids[i], top[i], strict=True) if a >= 0]
                raw[r] = (sel[i], float(lse[i]), pairs)
        if len(rows) == out.shape[0] and np.array_equal(rows, np.arange(len(rows))):
            x = out  # one row per sample, in order: processed in place
        else:
            x = out[rows]
        failed: dict[int, BaseException] = {}  # a request whose grammar broke ends with its error, alone
        for j, (req, s, _) in enumerate(takers):
            if s.sampler.changes_logits:
                s.sampler.process_inplace(x[j])
            if req.params.ignore_eos and self._eog.shape[0]:
                x[j, self._eog] = -np.inf  # the end is not an option
            if s.constraint is not None:
                try:
                    s.constraint.mask_inplace(x[j])
                except ValueError as e:
                    failed[id(req)] = e
                    x[j, 0] = 0.0  # any finite row: its token is dropped below
        tokens = choose_rows([s.sampler for _, s, _ in takers], x, n_threads=nt)
        now = time.monotonic()
        by_req: dict[str, tuple[Request, list[StreamChunk]]] = {}
        for j, (req, s, r) in enumerate(takers):
            if id(req) in failed:
                if req.status is not Status.FINISHED:
                    self._end(req, failed[id(req)])
                continue
            t = int(tokens[j])
            lp: float | None = None
            top_pairs: list[tuple[int, float]] | None = None
            if req.want_logprobs:
                row, lse_r, pairs = raw[int(r)]
                lp = float(row[t]) - lse_r
                top_pairs = pairs[: req.params.top_logprobs]
            try:
                chunk = self._update.advance(req, s, t, lp, top_pairs)
            except ValueError as e:  # the grammar refused the token: this request ends with the error
                failed[id(req)] = e
                self._end(req, e)
                continue
            by_req.setdefault(req.id, (req, []))[1].append(chunk)
            if not s.live:
                self._free_sample(req, s)
        for req, chunks in by_req.values():
            if id(req) in failed:
                continue
            if req.first_token_at is None:
                req.first_token_at = now
            req.token_times.append(now)
            chunks = [c for c in chunks if c.text or c.token_ids or c.finish_reason]
            if chunks:
                req.sink(chunks)
            if not req.live_samples:
                self._end(req, None)
        with self._cv:
            self._generated.append((now, len(takers)))
            self._trim_generated(now)

    # --- ends -------------------------------------------------------------------------------------

    def _release(self, req: Request, seq: int) -> None:
        """One of the request's sequences goes back to the pool (the cache hears of it first, with the
        tokens whose KV it holds: the prompt, and a sample's own tokens fed back so far)."""
        if self.cache is not None:
            held = next((req.prompt + s.token_ids for s in req.samples if s.seq == seq), req.prompt)
            held = held[:self.model.sequence_length(seq)]
            self.cache.on_event(self.model, BlockEvent("freed", req.id, seq, tuple(held)))
        self.model.free(seq)
        req.seqs.discard(seq)

    def _free_sample(self, req: Request, s: SampleState) -> None:
        if s.seq >= 0 and s.seq in req.seqs:
            self._release(req, s.seq)
        s.seq = -1

    def _free(self, req: Request) -> None:
        """Every block the request holds goes back to the pool."""
        for seq in sorted(req.seqs):
            self._release(req, seq)
        req.root = -1
        for s in req.samples:
            s.seq = -1

    def _end(self, req: Request, error: BaseException | None) -> None:
        """The request is done (finished, aborted, timed out or failed): free it and close its stream."""
        if req.status is Status.FINISHED:
            return
        self._free(req)
        self.scheduler.remove(req)
        req.status = Status.FINISHED
        req.finished_at = time.monotonic()
        req.error = error
        metrics = RequestMetrics(
            req.id, len(req.prompt), sum(len(s.token_ids) for s in req.samples), req.ttft(), req.itl(),
            req.finished_at - req.arrival, req.preemptions, req.cached_tokens)
        stream = req.stream_ref() if req.stream_ref is not None else None
        if isinstance(stream, RequestStream):
            stream.metrics = metrics
        if error is None and req.on_finish is not None and req.samples:
            try:
                req.on_finish(req.prompt + req.samples[0].token_ids)
            except Exception:  # a callback's failure must not take the engine thread down
                log.exception("request %s: on_finish failed", req.id)
        req.ended.set()
        req.sink(error)
        with self._cv:
            self._requests.pop(req.id, None)
            self._finished += 1
            self._recent.append(metrics)


@dataclass
class _Entry:
    """One row of the step's batch and what it belongs to: a sample's decode token or a prefill chunk's."""

    req: Request
    token: int
    position: int
    seq: int
    logits: bool
    sample: SampleState | None = None
    work: Work | None = None


def interleave(streams: Sequence[RequestStream]) -> Iterator[tuple[int, StreamChunk]]:
    """(stream index, chunk) from several streams as the chunks arrive; closing this closes them all."""
    wake: queue.SimpleQueue[int] = queue.SimpleQueue()
    for i, s in enumerate(streams):
        s._notify = lambda i=i: wake.put(i)  # type: ignore[misc]
    live = set(range(len(streams)))
    try:
        todo = list(live)  # whatever arrived before the hooks were set
        while live:
            for i in todo:
                if i not in live:
                    continue
                while True:
                    try:
                        c = streams[i].poll(block=False)
                    except StopIteration:
                        live.discard(i)
                        break
                    if c is None:
                        break
                    yield i, c
            if live:
                todo = [wake.get()]
    finally:
        for s in streams:
            s.close(wait=False)
        for s in streams:
            s.close()
