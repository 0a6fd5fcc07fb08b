"""Who is asking: API keys (``Authorization: Bearer``) and HTTP Basic users with salted password hashes,
compared in constant time. A caller is known by a key id (a hash prefix), never by its key."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from pathlib import Path

from .config import CallerPolicy, ServerConfigError, parse_policy

ITERATIONS = 200_000


def key_id(secret: str) -> str:
    """A stable, non-reversible name for a key or user (for logs, limits and metrics)."""
    return "key-" + hashlib.sha256(secret.encode()).hexdigest()[:12]


def hash_password(password: str, salt: bytes | None = None) -> str:
    """``salt_hex:hash_hex`` (PBKDF2-HMAC-SHA256): what a users file holds after ``user:``."""
    salt = os.urandom(16) if salt is None else salt
    return f"{salt.hex()}:{hashlib.pbkdf2_hmac('sha256', password.encode(), salt, ITERATIONS).hex()}"


def read_users(path: str) -> tuple[dict[str, tuple[bytes, bytes]], dict[str, CallerPolicy]]:
    """Basic users from lines ``user:salt_hex:hash_hex [option=value ...]``: their salts and hashes, and
    the policies of those with options (by caller id)."""
    users: dict[str, tuple[bytes, bytes]] = {}
    policies: dict[str, CallerPolicy] = {}
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as ex:
        raise ServerConfigError(f"basic users file {path!r}: {ex.strerror}") from None
    for n, line in enumerate(lines, 1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        parts = words[0].split(":")
        try:
            if len(parts) != 3 or not parts[0]:
                raise ValueError
            users[parts[0]] = (bytes.fromhex(parts[1]), bytes.fromhex(parts[2]))
        except ValueError:
            raise ServerConfigError(f"{path}:{n}: expected user:salt_hex:hash_hex [option=value ...]") from None
        policy = parse_policy(words[1:], f"{path}:{n}")
        if policy != CallerPolicy():
            policies[user_id(parts[0])] = policy
    return users, policies


def user_id(user: str) -> str:
    return key_id("basic:" + user)


class Authenticator:
    def __init__(self, keys: list[str], users: dict[str, tuple[bytes, bytes]] | None = None) -> None:
        self._keys = [k.encode() for k in keys]
        self._users = users or {}

    @property
    def required(self) -> bool:
        return bool(self._keys or self._users)

    def check(self, authorization: str | None) -> str | None:
        """The caller's id, or None when the header proves nothing (or nothing is required: "anonymous")."""
        if not self.required:
            return "anonymous"
        if not authorization:
            return None
        scheme, _, value = authorization.partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer" and self._keys:
            given = value.encode()
            ok = False
            for k in self._keys:  # every key compared, in constant time each
                ok |= hmac.compare_digest(given, k)
            return key_id(value) if ok else None
        if scheme.lower() == "basic" and self._users:
            try:
                user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return None
            salt, want = self._users.get(user, (b"\0" * 16, b""))
            got = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, ITERATIONS)
            return user_id(user) if hmac.compare_digest(got, want) and user in self._users else None
        return None
