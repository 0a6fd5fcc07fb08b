"""Block and session metadata in SQL, through SQLAlchemy Core: one schema for SQLite (the embedded
default), PostgreSQL and SAP HANA (``hana+hdbcli://user:pass@host:443/?encrypt=true``).

Tables (upper-case names, as HANA has them), DESIGN §6:

* ``KV_BLOCKS``: one row per stored block, keyed by its hash (the hash chain is rooted in the model's
  cache fingerprint, so equal keys are equal blocks of the same model and layout);
* ``KV_SESSIONS``: a named conversation's last block and length;
* ``INFERENCE_METRICS``: one row per served request (the HTTP server's).

Inserting a block that is already there is not an error (two replicas writing the same block leave
one row). Connections are pooled and pinged before use; transient errors are retried with
exponential backoff; statements are parameterized; URLs in messages have their password redacted.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from .blobs import StoreError, redact

log = logging.getLogger("nlm_native.storage")
T = TypeVar("T")

metadata = sa.MetaData()
KV_BLOCKS = sa.Table(
    "KV_BLOCKS", metadata,
    sa.Column("BLOCK_HASH", sa.String(64), primary_key=True),
    sa.Column("FINGERPRINT", sa.String(64), nullable=False, index=True),
    sa.Column("PARENT_HASH", sa.String(64), nullable=True),
    sa.Column("TOKEN_COUNT", sa.Integer, nullable=False),
    sa.Column("CODEC", sa.String(8), nullable=False),
    sa.Column("BYTE_SIZE", sa.BigInteger, nullable=False),
    sa.Column("CRC32C", sa.BigInteger, nullable=False),
    sa.Column("BLOB_KEY", sa.String(256), nullable=False),
    sa.Column("CREATED", sa.TIMESTAMP(), nullable=False),
    sa.Column("LAST_USED", sa.TIMESTAMP(), nullable=False, index=True),
    sa.Column("HITS", sa.BigInteger, nullable=False, default=0),
)
KV_SESSIONS = sa.Table(
    "KV_SESSIONS", metadata,
    sa.Column("SESSION_ID", sa.String(128), primary_key=True),
    sa.Column("MODEL", sa.String(64), nullable=False),
    sa.Column("LAST_BLOCK_HASH", sa.String(64), nullable=True),
    sa.Column("TOKEN_COUNT", sa.Integer, nullable=False),
    sa.Column("UPDATED", sa.TIMESTAMP(), nullable=False),
)

INFERENCE_METRICS = sa.Table(
    "INFERENCE_METRICS", metadata,
    sa.Column("REQUEST_ID", sa.String(64), primary_key=True),
    sa.Column("TIME", sa.TIMESTAMP(), nullable=False, index=True),
    sa.Column("KEY_ID", sa.String(32), nullable=False),  # a hash of the caller's key, never the key
    sa.Column("MODEL", sa.String(128), nullable=False),
    sa.Column("ENDPOINT", sa.String(32), nullable=False),
    sa.Column("PROMPT_TOKENS", sa.Integer, nullable=True),
    sa.Column("COMPLETION_TOKENS", sa.Integer, nullable=True),
    sa.Column("CACHED_TOKENS", sa.Integer, nullable=True),
    sa.Column("TTFT_MS", sa.Float, nullable=True),
    sa.Column("LATENCY_MS", sa.Float, nullable=False),
    sa.Column("STATUS", sa.Integer, nullable=False),
)


@dataclass(frozen=True)
class BlockRow:
    block_hash: str
    fingerprint: str
    parent_hash: str | None
    token_count: int
    codec: str
    byte_size: int
    crc32c: int
    blob_key: str


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class SqlStore:
    """Block metadata rows in one database (``url``: any SQLAlchemy URL of SQLite, PostgreSQL or HANA)."""

    RETRIES = 4

    def __init__(self, url: str, *, create: bool = True, engine: sa.Engine | None = None) -> None:
        self.url = redact(url)
        kw: dict[str, Any] = {"pool_pre_ping": True}
        if url.startswith("sqlite"):
            if "timeout=" not in url:  # how long to wait for another writer's lock
                kw["connect_args"] = {"timeout": 30}
        elif url.startswith("postgresql"):
            if "connect_timeout=" not in url:  # an unreachable server fails in seconds, not minutes
                kw["connect_args"] = {"connect_timeout": 5}
        try:
            self.engine = engine or sa.create_engine(url, **kw)
        except Exception as e:  # a bad URL or a missing driver
            raise StoreError(f"SQL store {self.url}: {type(e).__name__}: {redact(str(e))}") from None
        self._created = not create
        if create:
            try:
                self._ensure_tables()
            except StoreError as e:  # unreachable now: every later operation tries again
                log.warning("%s", e)

    def _ensure_tables(self) -> None:
        if not self._created:
            self._retry_once(lambda: metadata.create_all(self.engine), "create the tables")
            self._created = True

    def _retry(self, fn: Callable[[], T], what: str) -> T:
        self._ensure_tables()
        return self._retry_once(fn, what)

    def _retry_once(self, fn: Callable[[], T], what: str) -> T:
        """``fn`` with retries and exponential backoff on transient errors; StoreError when they run out."""
        delay = 0.05
        for attempt in range(self.RETRIES):
            try:
                return fn()
            except (OperationalError, DBAPIError) as e:
                if isinstance(e, IntegrityError):
                    raise
                transient = isinstance(e, OperationalError) or e.connection_invalidated
                if not transient or attempt == self.RETRIES - 1:
                    raise StoreError(f"SQL store {self.url}: cannot {what}: {type(e.orig).__name__}: "
                                     f"{redact(str(e.orig))}") from None
                log.warning("SQL store %s: %s failed (%s), retrying in %.2f s", self.url, what,
                            type(e.orig).__name__, delay)
                time.sleep(delay)
                delay *= 4
        raise AssertionError("unreachable")

    # --- blocks -------------------------------------------------------------------------------------

    def put_block(self, row: BlockRow) -> bool:
        """Record a stored block; False when it was there already (idempotent across replicas)."""
        now = _now()
        values = {"BLOCK_HASH": row.block_hash, "FINGERPRINT": row.fingerprint, "PARENT_HASH": row.parent_hash,
                  "TOKEN_COUNT": row.token_count, "CODEC": row.codec, "BYTE_SIZE": row.byte_size,
                  "CRC32C": row.crc32c, "BLOB_KEY": row.blob_key, "CREATED": now, "LAST_USED": now, "HITS": 0}

        def insert() -> bool:
            try:
                with self.engine.begin() as c:
                    c.execute(KV_BLOCKS.insert().values(**values))
                return True
            except IntegrityError:
                return False

        return self._retry(insert, "record a block")

    def get_blocks(self, hashes: Sequence[str]) -> dict[str, BlockRow]:
        """The rows of those of ``hashes`` that are stored."""
        if not hashes:
            return {}

        def select() -> dict[str, BlockRow]:
            with self.engine.connect() as c:
                rows = c.execute(sa.select(KV_BLOCKS).where(KV_BLOCKS.c.BLOCK_HASH.in_(list(hashes)))).mappings()
                return {r["BLOCK_HASH"]: BlockRow(r["BLOCK_HASH"], r["FINGERPRINT"], r["PARENT_HASH"],
                                                  int(r["TOKEN_COUNT"]), r["CODEC"], int(r["BYTE_SIZE"]),
                                                  int(r["CRC32C"]), r["BLOB_KEY"]) for r in rows}

        return self._retry(select, "look up blocks")

    def touch(self, hashes: Iterable[str]) -> None:
        """Blocks were used: their last-used time and hit count go up (for LRU retention)."""
        hs = list(hashes)
        if not hs:
            return
        stmt = (KV_BLOCKS.update().where(KV_BLOCKS.c.BLOCK_HASH.in_(hs))
                .values(LAST_USED=_now(), HITS=KV_BLOCKS.c.HITS + 1))

        def run() -> None:
            with self.engine.begin() as c:
                c.execute(stmt)

        self._retry(run, "update block use")

    def delete_blocks(self, hashes: Iterable[str]) -> None:
        hs = list(hashes)
        if not hs:
            return

        def run() -> None:
            with self.engine.begin() as c:
                c.execute(KV_BLOCKS.delete().where(KV_BLOCKS.c.BLOCK_HASH.in_(hs)))

        self._retry(run, "delete blocks")

    def retention(self, *, max_bytes: int | None = None, max_age_s: float | None = None,
                  fingerprint: str | None = None) -> list[BlockRow]:
        """The rows to evict, least recently used first, so that what is left is under ``max_bytes`` and
        no older than ``max_age_s`` (the caller deletes their payloads, then the rows)."""

        def run() -> list[BlockRow]:
            q = sa.select(KV_BLOCKS).order_by(KV_BLOCKS.c.LAST_USED.desc(), KV_BLOCKS.c.BLOCK_HASH)
            if fingerprint is not None:
                q = q.where(KV_BLOCKS.c.FINGERPRINT == fingerprint)
            cutoff = None if max_age_s is None else _now() - dt.timedelta(seconds=max_age_s)
            out: list[BlockRow] = []
            total = 0
            with self.engine.connect() as c:
                for r in c.execute(q).mappings():
                    total += int(r["BYTE_SIZE"])
                    too_big = max_bytes is not None and total > max_bytes
                    if too_big or (cutoff is not None and r["LAST_USED"] < cutoff):
                        out.append(BlockRow(r["BLOCK_HASH"], r["FINGERPRINT"], r["PARENT_HASH"], int(r["TOKEN_COUNT"]),
                                            r["CODEC"], int(r["BYTE_SIZE"]), int(r["CRC32C"]), r["BLOB_KEY"]))
            out.reverse()
            return out

        return self._retry(run, "apply retention")

    def count_blocks(self) -> int:
        def run() -> int:
            with self.engine.connect() as c:
                return int(c.execute(sa.select(sa.func.count()).select_from(KV_BLOCKS)).scalar_one())

        return self._retry(run, "count blocks")

    # --- sessions -----------------------------------------------------------------------------------

    def save_session(self, session_id: str, model: str, last_block_hash: str | None, token_count: int) -> None:
        values = {"MODEL": model, "LAST_BLOCK_HASH": last_block_hash, "TOKEN_COUNT": token_count, "UPDATED": _now()}

        def run() -> None:
            with self.engine.begin() as c:
                n = c.execute(KV_SESSIONS.update().where(KV_SESSIONS.c.SESSION_ID == session_id)
                              .values(**values)).rowcount
                if n == 0:
                    c.execute(KV_SESSIONS.insert().values(SESSION_ID=session_id, **values))

        self._retry(run, "save a session")

    def load_session(self, session_id: str) -> tuple[str, str | None, int] | None:
        """(model, last block hash, token count), or None."""

        def run() -> tuple[str, str | None, int] | None:
            with self.engine.connect() as c:
                r = c.execute(sa.select(KV_SESSIONS).where(KV_SESSIONS.c.SESSION_ID == session_id)).mappings().first()
                return None if r is None else (r["MODEL"], r["LAST_BLOCK_HASH"], int(r["TOKEN_COUNT"]))

        return self._retry(run, "load a session")

    # --- request metrics ------------------------------------------------------------------------------

    def put_metrics(self, rows: Sequence[dict[str, Any]]) -> None:
        """Inserts ``INFERENCE_METRICS`` rows (column names as keys) in one transaction."""
        if not rows:
            return

        def run() -> None:
            with self.engine.begin() as c:
                c.execute(INFERENCE_METRICS.insert(), list(rows))

        self._retry(run, "record request metrics")

    def count_metrics(self) -> int:
        def run() -> int:
            with self.engine.connect() as c:
                return int(c.execute(sa.select(sa.func.count()).select_from(INFERENCE_METRICS)).scalar_one())

        return self._retry(run, "count request metrics")

    def close(self) -> None:
        self.engine.dispose()
