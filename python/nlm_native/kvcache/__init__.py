"""The KV cache behind the engine: block hashes, the in-memory prefix index, and the stored form of a
block (issue 10 goes on with int8/int4 codecs, an in-RAM compressed tier and the persistent stores)."""

from .hashing import LAYOUT_VERSION, block_hashes, cache_fingerprint
from .payload import BlockFormatError, BlockLayout, decode, encode
from .prefix import PrefixIndex
from .store import BlockStore, StoreStats, WriteBehind, open_block_store

__all__ = ["LAYOUT_VERSION", "BlockFormatError", "BlockLayout", "BlockStore", "PrefixIndex", "StoreStats",
           "WriteBehind", "block_hashes", "cache_fingerprint", "decode", "encode", "open_block_store"]
