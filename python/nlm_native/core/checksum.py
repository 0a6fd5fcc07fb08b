"""CRC32C (Castagnoli), computed in the core: the checksum of every stored KV block."""

from __future__ import annotations

from .. import _core


def crc32c(data: bytes | bytearray | memoryview, value: int = 0) -> int:
    """CRC32C of ``data`` (any contiguous bytes-like object), extending ``value``:
    ``crc32c(b, crc32c(a)) == crc32c(a + b)``. Uses the SSE4.2 instruction where the CPU has it."""
    if not isinstance(value, int) or not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"crc32c: value must be an unsigned 32-bit integer, got {value!r}")
    return int(_core.crc32c(data, value))


def implementation() -> str:
    """``"sse4.2"`` or ``"portable"``."""
    return str(_core.crc32c_impl())
