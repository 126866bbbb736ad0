"""NIXL's Python agent (``nixl._api.nixl_agent``) on ringxfer.

Code written against NIXL 1.x runs by changing its imports (``nixl._api`` →
``ringxfer.nixl._api`` or ``ringxfer.nixl``). Each agent is one
:class:`ringxfer.Engine` named after the agent. NIXL's address-based descriptors
are translated to ringxfer's ``(region, offset, length)`` against the agent's
registrations (local side) and the table of registrations each agent publishes in
its metadata (remote side); a prepared transfer is a ringxfer prepared list, and
``transfer`` posts it again. ``docs/python.md`` lists every difference from NIXL.
"""

from __future__ import annotations

import bisect
import fcntl
import json
import os
import pickle
import struct
import time
from typing import Any, Dict, List, Optional, Tuple

import ringxfer

from ._bindings import (
    DEFAULT_COMM_PORT,
    NIXL_INIT_AGENT,
    nixlBackendError,
    nixlInvalidParamError,
    nixlMismatchError,
    nixlNoTelemetryError,
    nixlNotAllowedError,
    nixlNotFoundError,
    nixlNotPostedError,
    nixlNotSupportedError,
    nixlRegDList,
    nixlRemoteDisconnectError,
    nixlRepostActiveError,
    nixlXferDList,
)

#: The NIXL API version this module follows.
NIXL_API_VERSION = "1.4.0"

nixl_backend_handle = int

#: NIXL backend names → what does the job in ringxfer. UCX: the local transport
#: on one host (and the fabric across hosts when LIBFABRIC is also asked for);
#: LIBFABRIC: the fabric; POSIX: the file transport.
_PLUGINS: Dict[str, List[str]] = {
    "UCX": ["DRAM_SEG", "VRAM_SEG"],
    "LIBFABRIC": ["DRAM_SEG", "VRAM_SEG"],
    "POSIX": ["DRAM_SEG", "FILE_SEG"],
}
_REFUSED = {
    "GDS": "GDS (GPUDirect Storage) is not in ringxfer yet: use POSIX for files",
    "GDS_MT": "GDS_MT (GPUDirect Storage) is not in ringxfer yet: use POSIX for files",
    "OBJ": "OBJ (object stores) is not in ringxfer",
    "UCCL": "UCCL is not a ringxfer transport: use UCX or LIBFABRIC",
    "MOONCAKE": "Mooncake is not a ringxfer transport: use UCX or LIBFABRIC",
    "HF3FS": "HF3FS is not in ringxfer: use POSIX",
}
_MEMS = {"DRAM": "DRAM_SEG", "VRAM": "VRAM_SEG", "FILE": "FILE_SEG", "BLOCK": "BLK_SEG", "OBJ": "OBJ_SEG",
         "cpu": "DRAM_SEG", "cuda": "VRAM_SEG"}
_OPS = {"WRITE": "WRITE", "READ": "READ"}
_MAGIC = b"RXNIXL01"
_STATES = {"DONE": "DONE", "POSTED": "PROC", "RESERVED": "PROC", "FAILED": "ERR", "CANCELLED": "ERR"}


def _name(s) -> str:
    return s.decode() if isinstance(s, (bytes, bytearray)) else str(s)


def _translate(e: ringxfer.Error) -> Exception:
    """A ringxfer error as the NIXL exception a NIXL caller expects."""
    msg = f"{type(e).__name__}: {e}"
    if isinstance(e, (ringxfer.UnknownPeer, ringxfer.UnknownRegion, ringxfer.UnknownList)):
        return nixlNotFoundError(msg)
    if isinstance(e, (ringxfer.InvalidDescriptor, ringxfer.OutOfBounds, ringxfer.LengthMismatch,
                      ringxfer.TooManyDescriptors, ringxfer.NotificationTooLarge, ringxfer.StaleHandle,
                      ringxfer.InvalidHandle, ringxfer.InvalidConfig)):
        return nixlInvalidParamError(msg)
    if isinstance(e, ringxfer.MetadataError):
        return nixlMismatchError(msg)
    if isinstance(e, (ringxfer.PeerLost, ringxfer.PeerUnreachable)):
        return nixlRemoteDisconnectError(msg)
    if isinstance(e, ringxfer.Busy):
        return nixlNotAllowedError(msg)
    return nixlBackendError(msg)


class nixl_agent_config:
    """NIXL's agent configuration. ``ringxfer_config`` (a ringxfer extension) passes
    options to the engine (any ``ringxfer.Engine`` keyword)."""

    def __init__(self, enable_prog_thread: bool = True, enable_listen_thread: bool = False,
                 listen_port: int = DEFAULT_COMM_PORT, capture_telemetry: bool = False,
                 num_threads: int = 0, backends: Optional[List[str]] = None, sync_mode=None,
                 ringxfer_config: Optional[Dict[str, Any]] = None) -> None:
        self.enable_pthread = enable_prog_thread
        self.enable_listen = enable_listen_thread
        self.port = listen_port
        self.capture_telemetry = capture_telemetry
        self.num_threads = num_threads
        self.backends = ["UCX"] if backends is None else list(backends)
        self.sync_mode = sync_mode
        self.ringxfer_config = dict(ringxfer_config or {})


class nixl_prepped_dlist_handle:
    """A prepared side of transfers (``prep_xfer_dlist``)."""

    __slots__ = ("_agent", "_handle", "_released", "local", "peer", "descs", "mem")

    def __init__(self, agent, handle, local, peer, descs, mem) -> None:
        self._agent, self._handle, self._released = agent, handle, False
        self.local, self.peer, self.descs, self.mem = local, peer, descs, mem

    def release(self) -> None:
        self._released = True

    def __repr__(self) -> str:
        return f"nixl_prepped_dlist_handle({self._handle:#x}, released={self._released})"


class nixl_xfer_handle:
    """A transfer that can be posted again once it has ended (``transfer``)."""

    __slots__ = ("_agent", "_handle", "_released", "list", "notif", "current", "backend", "nbytes",
                 "ndescs", "t_post", "t_done", "t_post_end")

    def __init__(self, agent, handle, list_id, notif, backend, nbytes, ndescs) -> None:
        self._agent, self._handle, self._released = agent, handle, False
        self.list, self.notif, self.backend = list_id, notif, backend
        self.current: Optional[int] = None
        self.nbytes, self.ndescs = nbytes, ndescs
        self.t_post = self.t_done = self.t_post_end = 0

    def release(self) -> None:
        if not self._released:
            self._agent._release_xfer(self)

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"nixl_xfer_handle({self._handle:#x}, released={self._released})"


class nixlXferTelemetry:
    """What ``get_xfer_telemetry`` returns (times in µs)."""

    def __init__(self, start: int, post: int, xfer: int, nbytes: int, ndescs: int) -> None:
        self.startTime, self.postDuration, self.xferDuration = start, post, xfer
        self.totalBytes, self.descCount = nbytes, ndescs

    def __repr__(self) -> str:
        return (f"nixlXferTelemetry(startTime={self.startTime}, postDuration={self.postDuration}, "
                f"xferDuration={self.xferDuration}, totalBytes={self.totalBytes}, descCount={self.descCount})")


class _Regs:
    """An agent's registrations of one memory type, sorted by address, for turning
    ``(addr, len, devID)`` into ``(region, offset, len)``."""

    def __init__(self) -> None:
        self.starts: List[int] = []
        self.entries: List[Tuple[int, int, int, int]] = []  # (addr, len, dev, region)

    def add(self, addr: int, length: int, dev: int, region: int) -> None:
        i = bisect.bisect_right(self.starts, addr)
        self.starts.insert(i, addr)
        self.entries.insert(i, (addr, length, dev, region))

    def remove(self, addr: int, length: int, dev: int) -> Optional[int]:
        for i, (a, n, d, r) in enumerate(self.entries):
            if (a, n, d) == (addr, length, dev):
                del self.starts[i], self.entries[i]
                return r
        return None

    def find(self, addr: int, length: int, dev: int) -> Optional[Tuple[int, int]]:
        i = bisect.bisect_right(self.starts, addr)
        while i > 0:
            i -= 1
            a, n, d, r = self.entries[i]
            if d == dev and a <= addr and addr + length <= a + n:
                return r, addr - a
        return None


class nixl_agent:
    """NIXL's agent: one ringxfer engine named ``agent_name``."""

    def __init__(self, agent_name, nixl_conf: Optional[nixl_agent_config] = None,
                 instantiate_all: bool = False) -> None:
        name = _name(agent_name)
        if not name:
            raise ValueError("Agent needs a non-empty name")
        conf = nixl_conf or nixl_agent_config()
        self.name = name
        self._conf = conf
        self.plugin_list = list(_PLUGINS)
        self.nixl_mems = dict(_MEMS)
        self.nixl_ops = dict(_OPS)
        self.notifs: Dict[str, List[bytes]] = {}
        self.backends: Dict[str, int] = {}
        self.backend_mems: Dict[str, List[str]] = {}
        self.backend_options: Dict[str, Dict[str, str]] = {}
        self._leaked_xfer_handles: List[int] = []
        wanted = list(_PLUGINS) if (instantiate_all and nixl_conf is None) else conf.backends
        options: Dict[str, Any] = {
            "name": name, "capacity": 512, "max_descs_per_xfer": 128, "max_notif_bytes": 4096,
            "inbox_capacity": 32, "max_prepared_lists": 1024,
        }
        if "LIBFABRIC" in wanted:
            options["fabric"] = {"progress_thread": bool(conf.enable_pthread)}
        options.update(conf.ringxfer_config)
        self._engine = self._make_engine(options)
        self._regs: Dict[str, _Regs] = {m: _Regs() for m in ("DRAM_SEG", "VRAM_SEG", "FILE_SEG")}
        self._files: Dict[int, List[int]] = {}  # fd → [region, registrations]
        self._remotes: Dict[str, Tuple[int, Dict[str, _Regs]]] = {}
        self._next = 1
        self._notif_buf = bytearray(4096)
        for b in wanted:
            if b in _PLUGINS:
                self.create_backend(b)

    @staticmethod
    def _make_engine(options: Dict[str, Any]) -> ringxfer.Engine:
        if "cuda" in options:
            return ringxfer.Engine(**options)
        # GPU memory when CUDA is there; host memory and files without it.
        try:
            return ringxfer.Engine(cuda=True, **options)
        except ringxfer.Error:
            return ringxfer.Engine(**options)

    def _id(self) -> int:
        self._next += 1
        return (id(self) & 0xFFFF_FFFF) << 20 | self._next

    # ---- plugins and backends -------------------------------------------------------

    def get_plugin_list(self) -> List[str]:
        return list(self.plugin_list)

    def get_plugin_mem_types(self, backend: str) -> List[str]:
        return list(_PLUGINS.get(backend, []))

    def get_plugin_params(self, backend: str) -> Dict[str, str]:
        return {} if backend not in _PLUGINS else {"engine": "ringxfer"}

    def get_backend_mem_types(self, backend: str) -> List[str]:
        return list(self.backend_mems.get(backend, []))

    def get_backend_params(self, backend: str) -> Dict[str, str]:
        return dict(self.backend_options.get(backend, {}))

    def create_backend(self, backend: str, initParams: Optional[Dict[str, str]] = None) -> None:
        if backend in _REFUSED:
            raise nixlNotSupportedError(_REFUSED[backend])
        if backend not in _PLUGINS:
            raise nixlNotFoundError(f"no backend plugin named {backend!r} (ringxfer offers {sorted(_PLUGINS)})")
        if backend in self.backends:
            raise nixlInvalidParamError(f"backend {backend} was already created")
        if backend == "LIBFABRIC" and self._engine.config()["fabric"] is False:
            raise nixlBackendError(
                "LIBFABRIC must be in nixl_agent_config(backends=[...]): ringxfer fixes an agent's "
                "transports when it is created"
            )
        self.backends[backend] = self._id()
        self.backend_mems[backend] = list(_PLUGINS[backend])
        self.backend_options[backend] = dict(initParams or {})

    def _check_backends(self, backends) -> None:
        for b in backends or []:
            if b not in self.backends:
                raise KeyError(b)

    # ---- descriptors ------------------------------------------------------------------

    def _mem(self, mem_type) -> str:
        return _MEMS[mem_type]  # KeyError for an unknown type, as NIXL

    @staticmethod
    def _rows(descs) -> Optional[List[tuple]]:
        if type(descs).__module__ == "numpy":
            if getattr(descs, "ndim", 0) != 2 or descs.shape[1] != 3:
                raise ValueError("a descriptor array must be N x 3 (addr, len, devID)")
            if descs.dtype.kind not in "iu":
                raise ValueError("a descriptor array must hold int64 or uint64")
            return [tuple(int(x) for x in row) for row in descs.tolist()]
        return None

    @staticmethod
    def _tensor(t) -> Optional[Tuple[str, tuple]]:
        if not (hasattr(t, "data_ptr") and hasattr(t, "element_size")):
            return None
        if not t.is_contiguous():
            return None
        dev = t.get_device()
        mem = "DRAM_SEG" if dev < 0 else "VRAM_SEG"
        return mem, (t.data_ptr(), t.numel() * t.element_size(), max(dev, 0))

    def _descs(self, descs, mem_type, width: int):
        rows = self._rows(descs)
        if rows is not None:
            if mem_type is None:
                return None
            return self._mem(mem_type), [r + ("",) if width == 4 else r for r in rows]
        t = self._tensor(descs)
        if t is not None:
            mem, d = t
            return mem, [d + ("",) if width == 4 else d]
        if isinstance(descs, list):
            first = descs[0]  # IndexError on an empty list, as NIXL
            if isinstance(first, tuple):
                if mem_type is None or any(len(d) != width for d in descs):
                    return None
                return self._mem(mem_type), [tuple(d) for d in descs]
            ts = [self._tensor(x) for x in descs]
            if any(x is None for x in ts) or len({m for m, _ in ts}) != 1:
                return None
            return ts[0][0], [d + ("",) if width == 4 else d for _, d in ts]
        return None

    def get_xfer_descs(self, descs, mem_type: Optional[str] = None) -> Optional[nixlXferDList]:
        if isinstance(descs, nixlXferDList):
            return descs
        if isinstance(descs, nixlRegDList):
            return None
        got = self._descs(descs, mem_type, 3)
        return None if got is None else nixlXferDList(*got)

    def get_reg_descs(self, descs, mem_type: Optional[str] = None) -> Optional[nixlRegDList]:
        if isinstance(descs, nixlRegDList):
            return descs
        if isinstance(descs, nixlXferDList):
            return None
        got = self._descs(descs, mem_type, 4)
        return None if got is None else nixlRegDList(*got)

    def get_serialized_descs(self, descs) -> bytes:
        return pickle.dumps(descs)

    def deserialize_descs(self, serialized: bytes):
        return pickle.loads(serialized)

    # ---- registration -----------------------------------------------------------------

    def _register_file(self, fd: int, length: int) -> int:
        held = self._files.get(fd)
        if held is not None:
            held[1] += 1
            return held[0]
        try:
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        except OSError as e:
            raise nixlInvalidParamError(f"FILE descriptor: {fd} is not an open file descriptor ({e})") from None
        writable = (flags & os.O_ACCMODE) in (os.O_WRONLY, os.O_RDWR)
        region = self._engine.register(f"/proc/self/fd/{fd}", writable=writable)
        self._files[fd] = [region, 1]
        return region

    def register_memory(self, reg_list, mem_type: Optional[str] = None, backends=None) -> nixlRegDList:
        self._check_backends(backends)
        descs = self.get_reg_descs(reg_list, mem_type)
        if descs is None:
            raise TypeError("register_memory: expected a nixlRegDList, a list of (addr, len, devID, meta), "
                            "an N x 3 array with mem_type, or tensors")
        mem = descs.getType()
        if mem not in self._regs:
            raise nixlNotFoundError(f"no ringxfer backend registers {mem} memory")
        done = []
        try:
            for addr, length, dev, _meta in descs:
                if mem == "FILE_SEG":
                    region = self._register_file(dev, length)
                elif mem == "VRAM_SEG":
                    region = self._engine._register_vram(addr, length)
                else:
                    region = self._engine._register_dram(addr, length)
                self._regs[mem].add(addr, length, dev, region)
                done.append((addr, length, dev))
        except ringxfer.Error as e:
            for d in done:
                self._deregister_one(mem, *d)
            raise _translate(e) from e
        return descs

    def _deregister_one(self, mem: str, addr: int, length: int, dev: int) -> None:
        region = self._regs[mem].remove(addr, length, dev)
        if region is None:
            raise nixlNotFoundError(f"{mem} ({addr:#x}, {length}, {dev}) is not registered")
        if mem == "FILE_SEG":
            held = self._files[dev]
            held[1] -= 1
            if held[1]:
                return
            del self._files[dev]
        try:
            self._engine.deregister(region)
        except ringxfer.Error as e:
            raise _translate(e) from e

    def deregister_memory(self, dereg_list: nixlRegDList, backends=None) -> None:
        if not isinstance(dereg_list, nixlRegDList):
            raise TypeError("deregister_memory: expected the nixlRegDList register_memory returned")
        self._check_backends(backends)
        mem = dereg_list.getType()
        for addr, length, dev, _meta in dereg_list:
            self._deregister_one(mem, addr, length, dev)

    # ---- metadata and peers -------------------------------------------------------------

    def get_agent_metadata(self) -> bytes:
        """This agent's ringxfer metadata and its table of registrations (a
        snapshot: register memory first)."""
        table = {"name": self.name,
                 "regs": {m: r.entries for m, r in self._regs.items() if m != "FILE_SEG"}}
        head = json.dumps(table, separators=(",", ":")).encode()
        blob = self._engine.local_metadata()
        return _MAGIC + struct.pack("<I", len(head)) + head + blob

    def add_remote_agent(self, metadata: bytes) -> bytes:
        try:
            if not metadata.startswith(_MAGIC):
                raise ValueError("not ringxfer.nixl agent metadata")
            (n,) = struct.unpack_from("<I", metadata, len(_MAGIC))
            start = len(_MAGIC) + 4
            table = json.loads(metadata[start:start + n])
            name = str(table["name"])
            regs: Dict[str, _Regs] = {}
            for mem, entries in table["regs"].items():
                r = regs[str(mem)] = _Regs()
                for a, ln, d, reg in entries:
                    r.add(int(a), int(ln), int(d), int(reg))
            blob = bytes(metadata[start + n:])
        except (ValueError, KeyError, TypeError, struct.error) as e:
            raise nixlMismatchError(f"malformed agent metadata: {e}") from None
        if name == self.name:
            raise nixlInvalidParamError("an agent cannot load its own metadata")
        if name in self._remotes:
            self.remove_remote_agent(name)
        try:
            peer = self._engine.load_peer(blob)
        except ringxfer.Error as e:
            raise _translate(e) from e
        self._remotes[name] = (peer, regs)
        return name.encode()

    def remove_remote_agent(self, agent) -> None:
        got = self._remotes.pop(_name(agent), None)
        if got is not None:
            try:
                self._engine.unload_peer(got[0])
            except ringxfer.Error:
                pass

    def make_connection(self, remote_agent, backends=None) -> None:
        if _name(remote_agent) not in self._remotes:
            raise nixlNotFoundError(f"unknown remote agent {_name(remote_agent)!r}")

    def check_remote_metadata(self, remote_agent, descs=None) -> bool:
        return _name(remote_agent) in self._remotes

    def _unsupported(self, *args, **kwargs):
        raise nixlNotSupportedError(
            "socket and etcd metadata exchange are not in ringxfer.nixl: pass "
            "get_agent_metadata() to the peer's add_remote_agent()"
        )

    send_local_metadata = fetch_remote_metadata = invalidate_local_metadata = _unsupported
    send_partial_agent_metadata = _unsupported

    # ---- transfers ------------------------------------------------------------------------

    def _side(self, agent_name, descs: nixlXferDList):
        """(peer, [(region, offset, len)], local?) for one side of a transfer."""
        name = _name(agent_name)
        mem = descs.getType()
        if name in ("", "NIXL_INIT_AGENT"):
            regs, peer, local = self._regs.get(mem), None, True
        elif name == self.name:
            regs, peer, local = self._regs.get(mem), self._engine.local_peer(), False
        else:
            if name not in self._remotes:
                raise nixlNotFoundError(f"unknown remote agent {name!r}: add_remote_agent() first")
            peer, table = self._remotes[name]
            regs, local = table.get(mem), False
        out = []
        for addr, length, dev in descs:
            found = regs.find(addr, length, dev) if regs is not None else None
            if found is None:
                whose = "this agent" if local or name == self.name else f"agent {name!r}"
                raise nixlNotFoundError(f"{mem} ({addr:#x}, {length}, {dev}) is not in memory {whose} registered")
            region, off = found
            out.append((region, addr if mem == "FILE_SEG" else off, length))
        return peer, out, local

    def prep_xfer_dlist(self, agent_name, xfer_list, mem_type: Optional[str] = None,
                        backends=None) -> nixl_prepped_dlist_handle:
        self._check_backends(backends)
        descs = self.get_xfer_descs(xfer_list, mem_type)
        if descs is None:
            raise TypeError("prep_xfer_dlist: expected transfer descriptors (with mem_type for tuples)")
        peer, out, local = self._side(agent_name, descs)
        return nixl_prepped_dlist_handle(self, self._id(), local, peer, out, descs.getType())

    def _make(self, operation, local, peer, remote, notif, mem) -> nixl_xfer_handle:
        op = self.nixl_ops[operation]  # KeyError, as NIXL
        if len(local) != len(remote):
            raise nixlInvalidParamError(f"{len(local)} local descriptors against {len(remote)} remote")
        for i, (a, b) in enumerate(zip(local, remote)):
            if a[2] != b[2]:
                raise nixlInvalidParamError(f"descriptor {i}: {a[2]} bytes local, {b[2]} remote")
        try:
            list_id = self._engine.prepare_list(op, local, peer, remote)
        except ringxfer.Error as e:
            raise _translate(e) from e
        backend = "POSIX" if mem == "FILE_SEG" else ("LIBFABRIC" if "LIBFABRIC" in self.backends else "UCX")
        return nixl_xfer_handle(self, self._id(), list_id, bytes(notif or b""), backend,
                                sum(d[2] for d in local), len(local))

    def make_prepped_xfer(self, operation, local_xfer_side, local_indices, remote_xfer_side,
                          remote_indices, notif_msg=b"", backends=None,
                          skip_desc_merge: bool = False) -> nixl_xfer_handle:
        self._check_backends(backends)
        if not local_xfer_side.local or remote_xfer_side.local:
            raise nixlInvalidParamError("make_prepped_xfer: the local side is prepped with NIXL_INIT_AGENT, "
                                        "the remote side with a remote agent's name")
        li = [int(i) for i in local_indices]
        ri = [int(i) for i in remote_indices]
        try:
            local = [local_xfer_side.descs[i] for i in li]
            remote = [remote_xfer_side.descs[i] for i in ri]
        except IndexError:
            raise nixlInvalidParamError("make_prepped_xfer: an index past the prepped list") from None
        notif = notif_msg.encode() if isinstance(notif_msg, str) else notif_msg
        return self._make(operation, local, remote_xfer_side.peer, remote, notif, remote_xfer_side.mem)

    def initialize_xfer(self, operation, local_descs, remote_descs, remote_agent, notif_msg=b"",
                        backends=None) -> nixl_xfer_handle:
        self._check_backends(backends)
        if not isinstance(local_descs, nixlXferDList) or not isinstance(remote_descs, nixlXferDList):
            raise TypeError("initialize_xfer: the descriptors must be nixlXferDList (get_xfer_descs)")
        _, local, _ = self._side(NIXL_INIT_AGENT, local_descs)
        peer, remote, _ = self._side(remote_agent, remote_descs)
        notif = notif_msg.encode() if isinstance(notif_msg, str) else notif_msg
        return self._make(operation, local, peer, remote, notif, remote_descs.getType())

    def transfer(self, handle: nixl_xfer_handle, notif_msg=b"") -> str:
        """Posts the transfer (again, once its last posting has ended): ``"DONE"``
        if it ended at once, ``"PROC"`` while in flight, ``"ERR"`` if it failed."""
        if handle._released:
            raise nixlInvalidParamError("transfer: the handle was released")
        if notif_msg:
            notif = notif_msg.encode() if isinstance(notif_msg, str) else notif_msg
        else:
            notif = handle.notif or None
        timed = self._conf.capture_telemetry
        if timed:
            t0 = time.monotonic_ns()
        try:
            handle.current, status = self._engine._repost(handle.list, handle.current or 0, notif)
        except ringxfer.WrongState:
            raise nixlRepostActiveError("transfer: the previous posting is still in flight") from None
        except ringxfer.Error as err:
            handle.current = None
            raise _translate(err) from err
        if timed:
            handle.t_post, handle.t_post_end = t0, time.monotonic_ns()
            handle.t_done = handle.t_post_end if status == "DONE" else 0
        return _STATES[status]

    def _state(self, handle: nixl_xfer_handle) -> str:
        state = _STATES[self._engine.status(handle.current)]
        if state == "DONE" and not handle.t_done and self._conf.capture_telemetry:
            handle.t_done = time.monotonic_ns()
        return state

    def check_xfer_state(self, handle: nixl_xfer_handle) -> str:
        """``"DONE"``, ``"PROC"`` or ``"ERR"`` (the reason: the engine's
        ``failure(handle.current)``). A handle never posted raises
        ``nixlNotPostedError``."""
        if handle.current is None:
            raise nixlNotPostedError("check_xfer_state: the transfer was never posted")
        return self._state(handle)

    def query_xfer_backend(self, handle: nixl_xfer_handle) -> str:
        return handle.backend

    def get_xfer_telemetry(self, handle: nixl_xfer_handle) -> nixlXferTelemetry:
        if not self._conf.capture_telemetry:
            raise nixlNoTelemetryError("telemetry is off (nixl_agent_config(capture_telemetry=True))")
        if handle.current is None:
            raise nixlNotPostedError("get_xfer_telemetry: the transfer was never posted")
        state = self._state(handle)
        if state == "PROC":
            return nixlXferTelemetry(0, 0, 0, 0, 0)
        if state == "ERR":
            raise nixlBackendError(f"the transfer failed: {self._engine.failure(handle.current)}")
        return nixlXferTelemetry(handle.t_post // 1000, (handle.t_post_end - handle.t_post) // 1000,
                                 (handle.t_done - handle.t_post) // 1000, handle.nbytes, handle.ndescs)

    def estimate_xfer_cost(self, handle: nixl_xfer_handle):
        return 0, 0, "UNKNOWN"

    def _release_xfer(self, handle: nixl_xfer_handle) -> None:
        e = self._engine
        if e.closed:
            handle._released = True
            return
        if handle.current is not None:
            if e.status(handle.current) == "POSTED":
                e.cancel(handle.current)
            e.release(handle.current)  # detaches one still in flight: freed when it ends
            handle.current = None
        e.release_list(handle.list)
        handle._released = True

    def release_xfer_handle(self, handle: nixl_xfer_handle) -> None:
        handle.release()

    def release_dlist_handle(self, handle: nixl_prepped_dlist_handle) -> None:
        handle.release()

    # ---- notifications ----------------------------------------------------------------

    def send_notif(self, remote_agent_name, notif_msg, backend: Optional[str] = None) -> None:
        name = _name(remote_agent_name)
        if name not in self._remotes:
            raise nixlNotFoundError(f"unknown remote agent {name!r}")
        try:
            self._engine.notify(self._remotes[name][0], notif_msg)
        except ringxfer.Error as e:
            raise _translate(e) from e

    def get_new_notifs(self, backends=None) -> Dict[str, List[bytes]]:
        out: Dict[str, List[bytes]] = {}
        for sender, payload in self._engine.pop_notifications():
            out.setdefault(sender or "", []).append(payload)
        return out

    def update_notifs(self, backends=None) -> Dict[str, List[bytes]]:
        for name, msgs in self.get_new_notifs(backends).items():
            self.notifs.setdefault(name, []).extend(msgs)
        return self.notifs

    def check_remote_xfer_done(self, remote_agent_name, lookup_tag: bytes, backends=None,
                               tag_is_prefix: bool = True) -> bool:
        self.update_notifs(backends)
        msgs = self.notifs.get(_name(remote_agent_name), [])
        for i, m in enumerate(msgs):
            if (m.startswith(lookup_tag) if tag_is_prefix else lookup_tag in m):
                del msgs[i]
                return True
        return False

    # ---- ringxfer extensions -------------------------------------------------------------

    @property
    def engine(self) -> ringxfer.Engine:
        """The ringxfer engine under this agent (stats, ledger)."""
        return self._engine

    def close(self) -> dict:
        """Shuts the engine down; returns its final stats."""
        return self._engine.close()
