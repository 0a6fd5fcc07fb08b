"""Persistence: block metadata in SQL (SQLite | PostgreSQL | SAP HANA) and payloads in a blob store
(a local directory | S3-compatible object storage)."""

from .blobs import BlobStore, DirectoryStore, S3Store, StoreError, open_blob_store, redact
from .sql import BlockRow, SqlStore

__all__ = ["BlobStore", "BlockRow", "DirectoryStore", "S3Store", "SqlStore", "StoreError", "open_blob_store", "redact"]
