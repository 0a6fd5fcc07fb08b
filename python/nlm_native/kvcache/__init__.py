"""The KV cache behind the engine: block hashes, the in-memory prefix index, the stored form of a block,
the persistent tier (write-through, pipelined restore) and named sessions."""

from .hashing import LAYOUT_VERSION, block_hashes, cache_fingerprint
from .payload import BlockFormatError, BlockLayout, decode, encode
from .prefix import PrefixIndex
from .ramtier import RamTier
from .sessions import Session, SessionError, SessionStore
from .store import BlockStore, StoreStats, WriteBehind, open_block_store

__all__ = ["LAYOUT_VERSION", "BlockFormatError", "BlockLayout", "BlockStore", "PrefixIndex", "RamTier", "Session",
           "SessionError", "SessionStore", "StoreStats", "WriteBehind", "block_hashes", "cache_fingerprint",
           "decode", "encode", "open_block_store"]
