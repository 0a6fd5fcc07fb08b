"""Named conversations: a session's tokens (and chat messages), kept so that a later call, process or
replica continues it by name.

A session records what the model has seen and said: the token ids of its last request's prompt and
answer, and for chat sessions the message history. Its KV is not stored here: the blocks of those
tokens are the prefix cache's (kept in the pool, written through to the stores), found again by hash
when the session's next request is admitted.

With persistent stores a session is a ``KV_SESSIONS`` row (session id, model fingerprint, the hash
of its last full block, token count) and a JSON blob ``sessions/<fingerprint>/<sha256 of the id>``
holding the tokens and messages. Without stores sessions live in this process only.
"""

from __future__ import annotations

import copy
import hashlib
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from .hashing import block_hashes
from .store import BlockStore, WriteBehind

MAX_ID = 128
FORMAT = 1


class SessionError(ValueError):
    """A session that cannot be used here: a bad id, another model's, or a damaged record."""


@dataclass
class Session:
    session_id: str
    tokens: list[int] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)


def check_session_id(session_id: object) -> str:
    if not isinstance(session_id, str) or not 0 < len(session_id) <= MAX_ID or not session_id.isprintable():
        raise SessionError(f"session_id must be a printable string of 1 to {MAX_ID} characters, got {session_id!r}")
    return session_id


class SessionStore:
    """Sessions of one model and KV layout, in memory and, when given, in the persistent stores."""

    def __init__(self, root: bytes, block_tokens: int, n_vocab: int, store: BlockStore | None = None,
                 writer: WriteBehind | None = None) -> None:
        self.root = root
        self.bt = block_tokens
        self.n_vocab = n_vocab
        self.store = store
        self.writer = writer
        self.fp_hex = store.fp_hex if store is not None else root.hex()
        self._mem: dict[str, Session] = {}
        self._lock = threading.Lock()

    def key(self, session_id: str) -> str:
        return f"sessions/{self.fp_hex}/{hashlib.sha256(session_id.encode()).hexdigest()}"

    def get(self, session_id: str) -> Session | None:
        """The session (a copy), from memory or the stores; None if there is none."""
        check_session_id(session_id)
        with self._lock:
            s = self._mem.get(session_id)
        if s is None and self.store is not None:
            s = self._load(session_id)
            if s is not None:
                with self._lock:
                    self._mem.setdefault(session_id, s)
        return copy.deepcopy(s) if s is not None else None

    def update(self, session_id: str, tokens: list[int], messages: list[dict[str, Any]] | None = None) -> None:
        """Records the session's new state; persisted behind the requests (after their blocks)."""
        with self._lock:
            s = self._mem.setdefault(session_id, Session(session_id))
            s.tokens = list(tokens)
            if messages is not None:
                s.messages = copy.deepcopy(messages)
            snapshot = copy.deepcopy(s)
        if self.writer is not None:
            self.writer.submit_job(lambda: self._save(snapshot))

    def save(self, session_id: str) -> Session:
        """Writes the session to the stores now (after every block computed so far); raises if unknown."""
        check_session_id(session_id)
        with self._lock:
            s = copy.deepcopy(self._mem.get(session_id))
        if s is None:
            s = self.get(session_id)
            if s is None:
                raise SessionError(f"no session {session_id!r}")
        if self.writer is not None:
            self.writer.flush()
            self._save(s)
        return s

    def forget(self, session_id: str) -> None:
        with self._lock:
            self._mem.pop(session_id, None)

    # --- the stores -----------------------------------------------------------------------------

    def _save(self, s: Session) -> None:
        assert self.store is not None
        doc = {"format": FORMAT, "session_id": s.session_id, "fingerprint": self.fp_hex, "tokens": s.tokens,
               "messages": s.messages}
        self.store.blobs.put(self.key(s.session_id), json.dumps(doc, separators=(",", ":")).encode(), overwrite=True)
        hashes = block_hashes(s.tokens, self.bt, self.root)
        self.store.sql.save_session(s.session_id, self.fp_hex, hashes[-1].hex() if hashes else None, len(s.tokens))

    def _load(self, session_id: str) -> Session | None:
        assert self.store is not None
        row = self.store.sql.load_session(session_id)
        if row is None:
            return None
        model, _, count = row
        if model != self.fp_hex:
            raise SessionError(f"session {session_id!r} belongs to another model or KV layout (fingerprint "
                               f"{model[:16]}…, this one is {self.fp_hex[:16]}…)")
        blob = self.store.blobs.get(self.key(session_id))
        if blob is None:
            raise SessionError(f"session {session_id!r}: its record is in the database but its blob is missing")
        try:
            doc = json.loads(blob)
            tokens, messages = doc["tokens"], doc["messages"]
            ok = (doc.get("format") == FORMAT and doc.get("session_id") == session_id and isinstance(tokens, list)
                  and len(tokens) == count and isinstance(messages, list)
                  and all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < self.n_vocab for t in tokens)
                  and all(isinstance(m, dict) for m in messages))
        except (ValueError, KeyError, TypeError, AttributeError):
            ok = False
        if not ok:
            raise SessionError(f"session {session_id!r}: its stored record is damaged")
        return Session(session_id, tokens, messages)
