"""Blob stores for block payloads, content-addressed by key (``kv/<fingerprint>/<block hash>``).

* :class:`DirectoryStore` (``file:///dir``, the default): a file per key, written to a temporary name
  in the same directory and renamed into place, so a reader never sees half a payload;
* :class:`S3Store` (``s3://bucket/prefix?endpoint_url=...&region=...``): any S3-compatible endpoint
  (AWS, SAP BTP Object Store, MinIO, moto) through boto3; credentials come from boto3's usual
  sources (environment, config files), never from the URL, and never appear in messages.

A stored payload is immutable (its key is its content's hash), so a put of an existing key is a
no-op and concurrent writers need no coordination.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlparse


class StoreError(RuntimeError):
    """A store could not be reached or refused an operation (the message never holds credentials)."""


_SECRET = re.compile(r"(//[^/@:]*:)[^@/]*@")


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for messages and logs)."""
    return _SECRET.sub(r"\1***@", url)


class BlobStore(Protocol):
    def put(self, key: str, data: bytes, *, overwrite: bool = False) -> None:
        """Stores ``data`` under ``key``, atomically; an existing key is kept unless ``overwrite``."""
        ...

    def get(self, key: str) -> bytes | None:
        """The payload, or None when there is none under ``key``."""
        ...

    def delete(self, key: str) -> None: ...


_KEY = re.compile(r"[A-Za-z0-9_./-]{1,512}")


def _check_key(key: str) -> str:
    if not _KEY.fullmatch(key) or ".." in key.split("/") or key.startswith("/"):
        raise ValueError(f"blob key {key!r} is not a relative path of letters, digits, '_', '-', '.' and '/'")
    return key


class DirectoryStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def put(self, key: str, data: bytes, *, overwrite: bool = False) -> None:
        path = self._path(key)
        if path.exists() and not overwrite:  # content-addressed: the same key holds the same bytes
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StoreError(f"directory store {self.root}: cannot read {key}: {e.strerror}") from None

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


class S3Store:
    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None, region: str | None = None,
                 client: Any = None) -> None:
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise StoreError("an s3:// blob store needs boto3: pip install 'nlm-native[s3]'") from None

        if not bucket:
            raise ValueError("an S3 store needs a bucket")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint = endpoint_url
        self._client = client or boto3.client(
            "s3", endpoint_url=endpoint_url, region_name=region,
            config=Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=5, read_timeout=30))

    def _key(self, key: str) -> str:
        key = _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _fail(self, what: str, key: str, e: Exception) -> StoreError:
        code = getattr(e, "response", {}).get("Error", {}).get("Code", type(e).__name__)
        return StoreError(f"S3 store s3://{self.bucket}/{self.prefix} ({self.endpoint or 'AWS'}): {what} {key}: {code}")

    def put(self, key: str, data: bytes, *, overwrite: bool = False) -> None:
        try:
            self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        except Exception as e:  # botocore's errors, connection errors
            raise self._fail("cannot write", key, e) from None

    def get(self, key: str) -> bytes | None:
        try:
            return self._client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except Exception as e:
            code = getattr(e, "response", {}).get("Error", {}).get("Code")
            if code in ("NoSuchKey", "404"):
                return None
            raise self._fail("cannot read", key, e) from None

    def delete(self, key: str) -> None:
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as e:
            raise self._fail("cannot delete", key, e) from None


def open_blob_store(url: str) -> BlobStore:
    """``file:///dir`` (or a plain path) or ``s3://bucket/prefix?endpoint_url=...&region=...``."""
    u = urlparse(url)
    if u.scheme in ("", "file"):
        path = u.path if u.scheme else url
        if not path:
            raise ValueError("a directory blob store needs a path: file:///dir")
        return DirectoryStore(path)
    if u.scheme == "s3":
        q = {k: v[-1] for k, v in parse_qs(u.query).items()}
        unknown = set(q) - {"endpoint_url", "region"}
        if unknown:
            raise ValueError(f"s3 blob store: unknown option(s) {', '.join(sorted(unknown))} "
                             "(supported: endpoint_url, region)")
        if u.password or u.username:
            raise ValueError("s3 blob store: give credentials through the environment (AWS_ACCESS_KEY_ID, "
                             "AWS_SECRET_ACCESS_KEY) or boto3's config, not in the URL")
        return S3Store(u.hostname or "", u.path, endpoint_url=q.get("endpoint_url"), region=q.get("region"))
    raise ValueError(f"blob store {redact(url)!r}: the scheme must be file or s3")
