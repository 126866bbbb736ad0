"""NIXL's binding-level names on ringxfer: the exception types, memory-type and
operation constants, and the descriptor-list classes (``nixlXferDList``,
``nixlRegDList``) with NIXL's behaviour (equality ignores the meta strings, lists
pickle, ``trim()`` drops the meta)."""

from __future__ import annotations

from typing import Iterable, List

DRAM_SEG = "DRAM_SEG"
VRAM_SEG = "VRAM_SEG"
BLK_SEG = "BLK_SEG"
OBJ_SEG = "OBJ_SEG"
FILE_SEG = "FILE_SEG"
NIXL_READ = "READ"
NIXL_WRITE = "WRITE"
NIXL_INIT_AGENT = ""
DEFAULT_COMM_PORT = 8888


class nixlError(Exception):
    """Base of the NIXL exception types raised by ``ringxfer.nixl`` (NIXL's own
    types derive from ``Exception`` directly; ``except nixlBackendError`` and the
    like work unchanged)."""


class nixlNotPostedError(nixlError):
    pass


class nixlInvalidParamError(nixlError):
    pass


class nixlBackendError(nixlError):
    pass


class nixlNotFoundError(nixlError):
    pass


class nixlMismatchError(nixlError):
    pass


class nixlNotAllowedError(nixlError):
    pass


class nixlRepostActiveError(nixlError):
    pass


class nixlUnknownError(nixlError):
    pass


class nixlNotSupportedError(nixlError):
    pass


class nixlRemoteDisconnectError(nixlError):
    pass


class nixlCancelledError(nixlError):
    pass


class nixlNoTelemetryError(nixlError):
    pass


class _DList:
    """A typed list of descriptors. No ``__len__``/``__bool__``: as in NIXL, a list
    is always truthy; ``descCount()`` counts."""

    _width = 3

    def __init__(self, mem: str, descs: Iterable[tuple] = ()) -> None:
        self._mem = mem
        self._descs: List[tuple] = [self._check(d) for d in descs]

    def _check(self, d) -> tuple:
        d = tuple(d)
        if len(d) != self._width:
            raise TypeError(f"{type(self).__name__}: descriptors have {self._width} fields, got {d!r}")
        return d

    def descCount(self) -> int:
        return len(self._descs)

    def isEmpty(self) -> bool:
        return not self._descs

    def getType(self) -> str:
        return self._mem

    def __getitem__(self, i):
        return self._descs[i]

    def __setitem__(self, i, d) -> None:
        self._descs[i] = self._check(d)

    def __iter__(self):
        return iter(self._descs)

    def addDesc(self, d) -> None:
        self._descs.append(self._check(d))

    append = addDesc

    def index(self, d) -> int:
        return [x[:3] for x in self._descs].index(tuple(d)[:3])

    def remDesc(self, i: int) -> None:
        del self._descs[i]

    def clear(self) -> None:
        self._descs.clear()

    def print(self) -> None:
        print(f"{type(self).__name__}({self._mem}, {self._descs})")

    def __eq__(self, other) -> bool:
        if not isinstance(other, _DList):
            return NotImplemented
        return self._mem == other._mem and [d[:3] for d in self._descs] == [d[:3] for d in other._descs]

    def __ne__(self, other) -> bool:
        eq = self.__eq__(other)
        return eq if eq is NotImplemented else not eq

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._mem!r}, {self._descs!r})"


class nixlXferDList(_DList):
    """Transfer descriptors: ``(addr, len, devID)``."""

    _width = 3


class nixlRegDList(_DList):
    """Registration descriptors: ``(addr, len, devID, meta)``."""

    _width = 4

    def _check(self, d) -> tuple:
        d = super()._check(d)
        meta = d[3]
        return d if isinstance(meta, bytes) else (d[0], d[1], d[2], str(meta).encode())

    def trim(self) -> nixlXferDList:
        return nixlXferDList(self._mem, (d[:3] for d in self._descs))

