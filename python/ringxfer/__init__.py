"""ringxfer: a leak-proof, allocation-free transfer engine for KV-cache blocks.

The engine moves bytes between registered memory (host memory, GPU memory, files)
of this process and of peers, by handle::

    import ringxfer

    with ringxfer.Engine(name="a") as a, ringxfer.Engine(name="b") as b:
        src = bytearray(b"x" * 4096)
        s = a.register(src)                      # any writable buffer
        d = b.alloc_region(4096)                 # or memory the engine owns
        peer = a.load_peer(b.local_metadata())
        with a.transfer("WRITE", [(s, 0, 4096)], peer, [(d, 0, 4096)]) as t:
            t.post()
            assert t.wait() == "DONE"

Descriptors are ``(region, offset, length)`` tuples; handles, regions and peers are
ints; statuses are strings (``"DONE"``, ``"FAILED"``, ...). Every error is a
subclass of :class:`ringxfer.Error`. ``wait`` and every call that can block release
the GIL. See ``docs/python.md``.

Nothing beyond the standard library is imported: numpy arrays and torch tensors
are recognised by the protocols they implement (the buffer protocol,
``__cuda_array_interface__``, ``__dlpack__``, ``data_ptr()``).
"""

from __future__ import annotations

import ctypes
import os
from typing import Any, Optional, Tuple

from . import _native
from ._native import (  # noqa: F401  (re-exported)
    READ,
    WRITE,
    KvStore,
    MetadataServer,
    Transfer,
    __version__,
)
from ._native import *  # noqa: F401,F403  (the exception classes)
from ._native import Error  # noqa: F401

__all__ = [
    "Engine",
    "Transfer",
    "KvStore",
    "MetadataServer",
    "READ",
    "WRITE",
    "Error",
    "BadBuffer",
    "buffer_address",
]


class BadBuffer(_native.Error, TypeError):
    """An object that cannot be registered: read-only, not contiguous, empty, or
    exporting no memory the engine understands."""


def _writable_buffer(obj: Any) -> Tuple[int, int, Any]:
    """(address, length, keep-alive) of a writable, C-contiguous buffer.

    The ctypes array made over the buffer holds an export of it: while it lives a
    ``bytearray`` cannot be resized, so the registered memory cannot move.
    """
    view = memoryview(obj)
    if view.readonly:
        raise BadBuffer(
            f"cannot register a read-only buffer ({type(obj).__name__}): a peer may write "
            "into registered memory, and READs land in it; pass a writable one (bytearray, "
            "a writable numpy array)"
        )
    if not view.c_contiguous:
        raise BadBuffer(f"cannot register a non-contiguous buffer ({type(obj).__name__})")
    if view.nbytes == 0:
        raise BadBuffer(f"cannot register an empty buffer ({type(obj).__name__})")
    raw = view.cast("B") if view.format != "B" or view.ndim != 1 else view
    holder = (ctypes.c_char * view.nbytes).from_buffer(raw)
    return ctypes.addressof(holder), view.nbytes, (holder, raw, obj)


_DL_CPU, _DL_CUDA, _DL_CUDA_HOST = 1, 2, 3


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", _DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", _DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


def _dlpack(obj: Any) -> Tuple[int, int, bool, Any]:
    """(address, length, on_gpu, keep-alive) of a DLPack exporter (not consumed:
    the capsule keeps the tensor alive and frees it when collected)."""
    capsule = obj.__dlpack__()
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype = ctypes.c_void_p
    get.argtypes = [ctypes.py_object, ctypes.c_char_p]
    ptr = get(capsule, b"dltensor")
    if not ptr:
        raise BadBuffer(f"{type(obj).__name__}.__dlpack__() returned no DLPack tensor")
    t = _DLTensor.from_address(ptr)  # DLManagedTensor starts with its DLTensor
    count = 1
    for i in range(t.ndim):
        count *= t.shape[i]
    item = t.dtype.bits * t.dtype.lanes // 8
    if t.strides:
        expect = item
        for i in reversed(range(t.ndim)):
            if t.shape[i] != 1 and t.strides[i] * item != expect:
                raise BadBuffer(f"cannot register a non-contiguous tensor ({type(obj).__name__})")
            expect *= t.shape[i]
    if t.device.device_type not in (_DL_CPU, _DL_CUDA, _DL_CUDA_HOST):
        raise BadBuffer(f"DLPack device type {t.device.device_type} is neither host nor CUDA memory")
    on_gpu = t.device.device_type == _DL_CUDA
    return (t.data or 0) + t.byte_offset, count * item, on_gpu, (capsule, obj)


def buffer_address(obj: Any) -> Tuple[int, int, bool, Any]:
    """(address, length, on_gpu, keep-alive) of the memory ``obj`` exports.

    Understood, in this order: ``__cuda_array_interface__`` (CuPy, torch CUDA
    tensors, Numba), the buffer protocol (bytearray, memoryview, numpy arrays,
    mmap), DLPack (``__dlpack__``), and torch's ``data_ptr()``.
    """
    cai = getattr(obj, "__cuda_array_interface__", None)
    if cai is not None:
        ptr, readonly = cai["data"]
        if readonly:
            raise BadBuffer("cannot register a read-only CUDA array")
        shape = cai["shape"]
        typestr = cai["typestr"]
        item = int(typestr[2:])
        count = 1
        for n in shape:
            count *= n
        strides = cai.get("strides")
        if strides is not None:
            expect = item
            for n, s in reversed(list(zip(shape, strides))):
                if n != 1 and s != expect:
                    raise BadBuffer("cannot register a non-contiguous CUDA array")
                expect *= n
        return ptr, count * item, True, obj
    try:
        addr, length, keep = _writable_buffer(obj)
        return addr, length, False, keep
    except TypeError as e:
        if isinstance(e, BadBuffer):
            raise
    if hasattr(obj, "__dlpack__") and hasattr(obj, "__dlpack_device__"):
        return _dlpack(obj)
    if hasattr(obj, "data_ptr") and hasattr(obj, "element_size"):
        if not obj.is_contiguous():
            raise BadBuffer(f"cannot register a non-contiguous tensor ({type(obj).__name__})")
        on_gpu = bool(getattr(obj, "is_cuda", False))
        return obj.data_ptr(), obj.numel() * obj.element_size(), on_gpu, obj
    raise BadBuffer(
        f"cannot register a {type(obj).__name__}: expected a writable buffer (bytearray, "
        "numpy array, memoryview), a CUDA array (__cuda_array_interface__), a DLPack "
        "tensor, or a file path"
    )


class Engine(_native.Engine):
    """The transfer engine: ``Engine(**config)`` takes every ``ringxfer::Config``
    field by name (durations in seconds; ``fabric`` and ``cuda`` as ``True`` or a
    dict of their options), validated with the same errors as in Rust."""

    def register(
        self,
        obj: Any,
        *,
        writable: bool = False,
        create: bool = False,
        length: Optional[int] = None,
        sync: bool = False,
    ) -> int:
        """Registers memory or a file; returns the region id.

        ``obj`` is a writable buffer (bytearray, numpy array, memoryview, mmap), a
        CUDA array or tensor (``__cuda_array_interface__``/DLPack: GPU memory, needs
        the engine's ``cuda``), or a path (``str``/``os.PathLike``: a file, opened
        read-only unless ``writable``; ``create`` and ``length`` make and size it).
        The object is kept alive until :meth:`deregister` or :meth:`close`.
        """
        if isinstance(obj, (str, os.PathLike)):
            return self.register_file(os.fspath(obj), writable, create, length, sync)
        if isinstance(obj, bytes):
            raise BadBuffer("cannot register bytes (read-only): use a bytearray")
        addr, nbytes, on_gpu, keep = buffer_address(obj)
        if on_gpu:
            return self._register_vram(addr, nbytes, keep)
        return self._register_dram(addr, nbytes, keep)

    def __repr__(self) -> str:
        if self.closed:
            return "<ringxfer.Engine closed>"
        return f"<ringxfer.Engine {self.name!r}>"
