"""The server's configuration: flags and ``NLM_*`` environment variables, checked at start."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..core.model import KV_CODECS


class ServerConfigError(ValueError):
    """A setting that cannot work, named with what was wrong."""


PRIORITIES = ("low", "normal", "high")


@dataclass(frozen=True)
class CallerPolicy:
    """What one API key or Basic user may do, where it differs from the server-wide settings."""

    max_priority: str | None = None
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None


def parse_policy(options: list[str], where: str) -> CallerPolicy:
    """``max_priority=low requests_per_minute=30 tokens_per_minute=20000`` (any of them, any order)."""
    got: dict[str, object] = {}
    for opt in options:
        name, eq, value = opt.partition("=")
        if not eq or name not in CallerPolicy.__dataclass_fields__:
            raise ServerConfigError(f"{where}: unknown option {name!r}; options are max_priority=low|normal|high, "
                                    "requests_per_minute=N, tokens_per_minute=N")
        if name == "max_priority":
            if value not in PRIORITIES:
                raise ServerConfigError(f"{where}: max_priority must be one of {', '.join(PRIORITIES)}, got {value!r}")
            got[name] = value
            continue
        try:
            rate = float(value)
        except ValueError:
            rate = -1.0
        if not rate > 0 or rate == float("inf"):
            raise ServerConfigError(f"{where}: {name} must be a positive number, got {value!r}")
        got[name] = rate
    return CallerPolicy(**got)  # type: ignore[arg-type]


def parse_key(spec: str, where: str) -> tuple[str, CallerPolicy]:
    """An API key entry, ``KEY [option=value ...]``: the key and its policy (errors never show the key)."""
    parts = spec.split()
    if not parts:
        raise ServerConfigError(f"{where}: an API key is empty")
    return parts[0], parse_policy(parts[1:], where)


@dataclass
class ServerConfig:
    model: str | None = None            # GGUF path; None: the default model (fetched if needed)
    model_name: str | None = None       # the id /v1/models reports (default: the file's general.name)
    host: str = "127.0.0.1"
    port: int = 8000
    threads: int | None = None
    ctx: int = 4096
    kv_codec: str = "f16"
    kv_store: str | None = None
    blob_store: str | None = None
    # entries "KEY [max_priority=...] [requests_per_minute=N] [tokens_per_minute=N]" (see parse_key)
    api_keys: list[str] = field(default_factory=list)
    # lines "user:salt_hex:pbkdf2_sha256_hex [options as for a key]" (see auth.hash_password)
    basic_users_file: str | None = None
    max_body_bytes: int = 1 << 20
    requests_per_minute: float | None = None   # per key; None: unlimited
    tokens_per_minute: float | None = None     # per key, prompt + max_tokens
    max_priority: str = "high"                 # the highest priority a request may ask for
    request_timeout: float | None = None       # seconds: every request's timeout, and the most one may ask
    max_waiting: int = 1024
    max_seqs: int = 64
    cors_origins: list[str] = field(default_factory=list)
    drain_seconds: float = 30.0
    # INFERENCE_METRICS rows: an SQL URL (SQLite, PostgreSQL, HANA); None: a SQLite file in the cache
    # folder; "off": none
    metrics_store: str | None = None

    def check(self) -> ServerConfig:
        if not 0 < self.port < 65536:
            raise ServerConfigError(f"port must be in 1..65535, got {self.port}")
        if self.threads is not None and self.threads <= 0:
            raise ServerConfigError(f"threads must be positive, got {self.threads}")
        if self.ctx <= 0:
            raise ServerConfigError(f"ctx must be positive, got {self.ctx}")
        if self.kv_codec not in KV_CODECS:
            raise ServerConfigError(f"kv_codec must be one of {', '.join(KV_CODECS)}, got {self.kv_codec!r}")
        if self.model is not None and not Path(self.model).is_file():
            raise ServerConfigError(f"model {self.model!r} is not a file")
        if self.max_body_bytes <= 0:
            raise ServerConfigError(f"max_body_bytes must be positive, got {self.max_body_bytes}")
        for name in ("requests_per_minute", "tokens_per_minute", "request_timeout"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ServerConfigError(f"{name} must be positive, got {v}")
        for name in ("max_waiting", "max_seqs"):
            if getattr(self, name) <= 0:
                raise ServerConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if not self.drain_seconds >= 0:
            raise ServerConfigError(f"drain_seconds must be >= 0, got {self.drain_seconds}")
        if self.max_priority not in PRIORITIES:
            raise ServerConfigError(f"max_priority must be one of {', '.join(PRIORITIES)}, got {self.max_priority!r}")
        self.keys()  # every entry parses
        if self.basic_users_file is not None and not Path(self.basic_users_file).is_file():
            raise ServerConfigError(f"basic users file {self.basic_users_file!r} is not a file")
        return self

    def keys(self) -> list[tuple[str, CallerPolicy]]:
        """The API keys with their policies."""
        return [parse_key(spec, f"API key #{i + 1}") for i, spec in enumerate(self.api_keys)]

    @classmethod
    def from_env(cls, env: os._Environ[str] | dict[str, str] | None = None) -> ServerConfig:
        """Defaults overridden by ``NLM_MODEL``, ``NLM_HOST``, ``NLM_PORT``, ``NLM_THREADS``, ``NLM_CTX``,
        ``NLM_KV_CODEC``, ``NLM_KV_STORE``, ``NLM_BLOB_STORE``, ``NLM_API_KEYS`` (comma-separated),
        ``NLM_API_KEYS_FILE`` (a key per line), ``NLM_BASIC_USERS_FILE``, ``NLM_MAX_BODY_BYTES``,
        ``NLM_REQUESTS_PER_MINUTE``, ``NLM_TOKENS_PER_MINUTE``, ``NLM_MAX_PRIORITY``, ``NLM_REQUEST_TIMEOUT``,
        ``NLM_MAX_WAITING``, ``NLM_MAX_SEQS``, ``NLM_DRAIN_SECONDS``, ``NLM_MODEL_NAME``, ``NLM_CORS_ORIGINS``,
        ``NLM_METRICS_STORE``."""
        e = os.environ if env is None else env
        c = cls()

        def num(name: str, kind: type) -> object:
            raw = e.get(name)
            if raw in (None, ""):
                return None
            try:
                return kind(raw)
            except ValueError:
                raise ServerConfigError(f"${name} must be a {kind.__name__}, got {raw!r}") from None

        c.model = e.get("NLM_MODEL") or None
        c.host = e.get("NLM_HOST") or c.host
        for name, attr, kind in (("NLM_PORT", "port", int), ("NLM_THREADS", "threads", int), ("NLM_CTX", "ctx", int),
                                 ("NLM_MAX_BODY_BYTES", "max_body_bytes", int),
                                 ("NLM_REQUESTS_PER_MINUTE", "requests_per_minute", float),
                                 ("NLM_TOKENS_PER_MINUTE", "tokens_per_minute", float),
                                 ("NLM_REQUEST_TIMEOUT", "request_timeout", float),
                                 ("NLM_MAX_WAITING", "max_waiting", int), ("NLM_MAX_SEQS", "max_seqs", int),
                                 ("NLM_DRAIN_SECONDS", "drain_seconds", float)):
            v = num(name, kind)
            if v is not None:
                setattr(c, attr, v)
        c.model_name = e.get("NLM_MODEL_NAME") or None
        c.max_priority = e.get("NLM_MAX_PRIORITY") or c.max_priority
        c.kv_codec = e.get("NLM_KV_CODEC") or c.kv_codec
        c.kv_store = e.get("NLM_KV_STORE") or None
        c.blob_store = e.get("NLM_BLOB_STORE") or None
        c.api_keys = [k.strip() for k in (e.get("NLM_API_KEYS") or "").split(",") if k.strip()]
        if e.get("NLM_API_KEYS_FILE"):
            c.api_keys += read_keys(e["NLM_API_KEYS_FILE"])
        c.basic_users_file = e.get("NLM_BASIC_USERS_FILE") or None
        c.cors_origins = [o.strip() for o in (e.get("NLM_CORS_ORIGINS") or "").split(",") if o.strip()]
        c.metrics_store = e.get("NLM_METRICS_STORE") or None
        return c


def read_keys(path: str) -> list[str]:
    """API key entries from a file, one per line, ``KEY [option=value ...]`` (blank lines and # comments
    skipped); each is checked here, so an error names the file and line."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as ex:
        raise ServerConfigError(f"API keys file {path!r}: {ex.strerror}") from None
    out = []
    for n, ln in enumerate(lines, 1):
        if ln.strip() and not ln.strip().startswith("#"):
            parse_key(ln, f"{path}:{n}")
            out.append(ln.strip())
    return out


def metrics_url(config: ServerConfig) -> str | None:
    """Where INFERENCE_METRICS rows go (None: nowhere)."""
    if config.metrics_store == "off":
        return None
    if config.metrics_store:
        return config.metrics_store
    from ..core.fetch import cache_dir

    d = cache_dir()
    d.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{d / 'metrics.db'}"
