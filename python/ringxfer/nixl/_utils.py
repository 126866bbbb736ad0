"""NIXL's test helpers (``nixl._utils``): page-aligned host buffers by address."""

from __future__ import annotations

import ctypes

_libc = ctypes.CDLL(None)
_libc.aligned_alloc.restype = ctypes.c_void_p
_libc.aligned_alloc.argtypes = [ctypes.c_size_t, ctypes.c_size_t]
_libc.free.argtypes = [ctypes.c_void_p]


def malloc_passthru(size: int) -> int:
    """A zeroed, 4096-aligned host buffer of ``size`` bytes; its address."""
    rounded = (size + 4095) // 4096 * 4096
    addr = _libc.aligned_alloc(4096, rounded)
    if not addr:
        raise MemoryError(f"aligned_alloc({rounded}) failed")
    ctypes.memset(addr, 0, rounded)
    return addr


def free_passthru(addr: int) -> None:
    _libc.free(addr)


def ba_buf(addr: int, size: int) -> None:
    """Fills a buffer with 0xba."""
    ctypes.memset(addr, 0xBA, size)


def verify_transfer(addr1: int, addr2: int, size: int) -> None:
    """Asserts that two buffers hold the same bytes."""
    assert ctypes.string_at(addr1, size) == ctypes.string_at(addr2, size), "buffers differ"
