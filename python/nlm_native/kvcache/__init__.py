"""The KV cache behind the engine: block hashes and the in-memory prefix index (issue 10 goes on
with codecs, an in-RAM compressed tier and the persistent stores)."""

from .hashing import LAYOUT_VERSION, block_hashes, cache_fingerprint
from .prefix import PrefixIndex

__all__ = ["LAYOUT_VERSION", "PrefixIndex", "block_hashes", "cache_fingerprint"]
