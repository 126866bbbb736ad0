"""ringxfer.nixl: NIXL's documented two-agent example flow, unchanged but for its
imports (and its torch step, run only where torch is installed), then files over
POSIX, prepped transfers, telemetry, and NIXL's error types."""

import os

import pytest

import ringxfer
import ringxfer.nixl._utils as nixl_utils
from ringxfer.nixl import (
    nixl_agent,
    nixl_agent_config,
    nixlInvalidParamError,
    nixlMismatchError,
    nixlNoTelemetryError,
    nixlNotFoundError,
    nixlNotPostedError,
    nixlNotSupportedError,
    nixlRepostActiveError,
)
from ringxfer.nixl.logging import get_logger

try:
    import numpy as np
except ImportError:
    np = None
try:
    import torch
except ImportError:
    torch = None

logger = get_logger(__name__)


@pytest.mark.skipif(np is None, reason="the example uses numpy")
def test_nixl_api_example_flow():
    # From NIXL's examples/python/nixl_api_example.py (1.x), imports changed.
    buf_size = 256
    agent_config = nixl_agent_config(backends=["UCX"])
    nixl_agent1 = nixl_agent("target", agent_config)
    plugin_list = nixl_agent1.get_plugin_list()
    assert "UCX" in plugin_list
    logger.info("Plugin parameters %s %s", nixl_agent1.get_plugin_mem_types("UCX"), nixl_agent1.get_plugin_params("UCX"))
    logger.info("Backend parameters %s %s", nixl_agent1.get_backend_mem_types("UCX"), nixl_agent1.get_backend_params("UCX"))

    addr1 = nixl_utils.malloc_passthru(buf_size * 2)
    addr2 = addr1 + buf_size
    agent1_addrs = [(addr1, buf_size, 0), (addr2, buf_size, 0)]
    agent1_strings = [(addr1, buf_size, 0, "a"), (addr2, buf_size, 0, "b")]
    agent1_reg_descs = nixl_agent1.get_reg_descs(agent1_strings, "DRAM")
    agent1_xfer_descs = nixl_agent1.get_xfer_descs(agent1_addrs, "DRAM")

    agent1_addrs_np = np.array(agent1_addrs)
    agent1_xfer_descs_np = nixl_agent1.get_xfer_descs(agent1_addrs_np, "DRAM")
    agent1_reg_descs_np = nixl_agent1.get_reg_descs(agent1_addrs_np, "DRAM")
    assert agent1_xfer_descs == agent1_xfer_descs_np
    assert agent1_reg_descs == agent1_reg_descs_np

    if torch is not None:
        tensors = [torch.zeros(10, dtype=torch.float32) for _ in range(2)]
        assert nixl_agent1.get_reg_descs(tensors) is not None
        assert nixl_agent1.get_xfer_descs(tensors) is not None

    assert nixl_agent1.register_memory(agent1_reg_descs) is not None

    nixl_agent2 = nixl_agent("initiator", None)
    addr3 = nixl_utils.malloc_passthru(buf_size * 2)
    addr4 = addr3 + buf_size
    agent2_addrs = [(addr3, buf_size, 0), (addr4, buf_size, 0)]
    agent2_strings = [(addr3, buf_size, 0, "a"), (addr4, buf_size, 0, "b")]
    agent2_reg_descs = nixl_agent2.get_reg_descs(agent2_strings, "DRAM")
    agent2_xfer_descs = nixl_agent2.get_xfer_descs(agent2_addrs, "DRAM")
    agent2_descs = nixl_agent2.register_memory(agent2_reg_descs)
    assert agent2_descs is not None

    meta = nixl_agent1.get_agent_metadata()
    remote_name = nixl_agent2.add_remote_agent(meta)
    assert remote_name == b"target"

    serdes = nixl_agent1.get_serialized_descs(agent1_reg_descs)
    src_descs_recvd = nixl_agent2.deserialize_descs(serdes)
    assert src_descs_recvd == agent1_reg_descs

    nixl_utils.ba_buf(addr1, buf_size * 2)  # (not in the example: bytes to check)
    xfer_handle_1 = nixl_agent2.initialize_xfer("READ", agent2_xfer_descs, agent1_xfer_descs, remote_name, b"UUID1")
    assert xfer_handle_1
    for _ in range(2):  # the example posts the same handle twice
        state = nixl_agent2.transfer(xfer_handle_1)
        assert state != "ERR"
        target_done = init_done = False
        while (not init_done) or (not target_done):
            if not init_done:
                state = nixl_agent2.check_xfer_state(xfer_handle_1)
                assert state != "ERR"
                init_done = state == "DONE"
            if not target_done:
                target_done = nixl_agent1.check_remote_xfer_done("initiator", b"UUID1")
    nixl_utils.verify_transfer(addr1, addr3, buf_size * 2)

    local_prep_handle = nixl_agent2.prep_xfer_dlist("NIXL_INIT_AGENT", [(addr3, buf_size, 0), (addr4, buf_size, 0)], "DRAM")
    remote_prep_handle = nixl_agent2.prep_xfer_dlist(remote_name, agent1_xfer_descs, "DRAM")
    assert local_prep_handle != 0
    assert remote_prep_handle != 0

    test_notif = str.encode("DESCS: ") + serdes
    nixl_agent2.send_notif(remote_name, test_notif)
    notif_recv = False
    while not notif_recv:
        notif_map = nixl_agent1.get_new_notifs()
        if "initiator" in notif_map:
            for msg in notif_map["initiator"]:
                if msg == test_notif:
                    notif_recv = True

    ctypes_fill(addr3, buf_size, 0x11)
    ctypes_fill(addr4, buf_size, 0x22)
    xfer_handle_2 = nixl_agent2.make_prepped_xfer("WRITE", local_prep_handle, [0, 1], remote_prep_handle, [1, 0], b"UUID2")
    assert xfer_handle_2 and local_prep_handle and remote_prep_handle
    state = nixl_agent2.transfer(xfer_handle_2)
    assert state != "ERR"
    target_done = init_done = False
    while (not init_done) or (not target_done):
        if not init_done:
            state = nixl_agent2.check_xfer_state(xfer_handle_2)
            assert state != "ERR"
            init_done = state == "DONE"
        if not target_done:
            target_done = nixl_agent1.check_remote_xfer_done("initiator", b"UUID2")
    # Swapped: addr3's bytes at addr2, addr4's at addr1.
    nixl_utils.verify_transfer(addr2, addr3, buf_size)
    nixl_utils.verify_transfer(addr1, addr4, buf_size)

    nixl_agent2.release_xfer_handle(xfer_handle_1)
    nixl_agent2.release_xfer_handle(xfer_handle_2)
    nixl_agent2.release_dlist_handle(local_prep_handle)
    nixl_agent2.release_dlist_handle(remote_prep_handle)
    nixl_agent2.remove_remote_agent("target")
    nixl_agent1.deregister_memory(agent1_reg_descs)
    nixl_agent2.deregister_memory(agent2_reg_descs)
    # (ringxfer: nothing is left held by either engine)
    nixl_agent1.engine.check_quiescent()
    nixl_agent2.engine.check_quiescent()
    nixl_agent1.close()
    nixl_agent2.close()
    nixl_utils.free_passthru(addr1)
    nixl_utils.free_passthru(addr3)


def ctypes_fill(addr, n, byte):
    import ctypes

    ctypes.memset(addr, byte, n)


def test_posix_files(tmp_path):
    # NIXL's file flow: (offset, len, fd, meta) descriptors, loopback transfers.
    agent = nixl_agent("files", nixl_agent_config(backends=["POSIX"]))
    assert agent.backends.keys() == {"POSIX"}
    size = 8192
    mem = nixl_utils.malloc_passthru(size)
    back = nixl_utils.malloc_passthru(size)
    nixl_utils.ba_buf(mem, size)
    fd = os.open(tmp_path / "f.bin", os.O_RDWR | os.O_CREAT)
    os.ftruncate(fd, size)
    dram = agent.register_memory([(mem, size, 0, "m"), (back, size, 0, "b")], "DRAM")
    files = agent.register_memory([(0, size, fd, "f")], "FILE")
    file_xfer = files.trim()
    w = agent.initialize_xfer("WRITE", agent.get_xfer_descs([(mem, size, 0)], "DRAM"), file_xfer, "files")
    assert agent.query_xfer_backend(w) == "POSIX"
    assert agent.transfer(w) in ("DONE", "PROC")
    while agent.check_xfer_state(w) == "PROC":
        pass
    assert agent.check_xfer_state(w) == "DONE"
    assert os.pread(fd, size, 0) == b"\xba" * size
    r = agent.initialize_xfer("READ", agent.get_xfer_descs([(back, size, 0)], "DRAM"), file_xfer, "files")
    agent.transfer(r)
    while agent.check_xfer_state(r) == "PROC":
        pass
    nixl_utils.verify_transfer(mem, back, size)
    for h in (w, r):
        agent.release_xfer_handle(h)
    agent.deregister_memory(files)
    agent.deregister_memory(dram)
    agent.engine.check_quiescent()
    agent.close()
    os.close(fd)
    nixl_utils.free_passthru(mem)
    nixl_utils.free_passthru(back)


def test_errors_and_telemetry():
    a = nixl_agent("a", nixl_agent_config(capture_telemetry=True))
    b = nixl_agent("b")
    with pytest.raises(ValueError):
        nixl_agent("")
    with pytest.raises(nixlNotSupportedError, match="GDS"):
        a.create_backend("GDS")
    with pytest.raises(nixlNotFoundError):
        a.create_backend("UVX")
    with pytest.raises(nixlInvalidParamError):
        a.create_backend("UCX")  # twice
    with pytest.raises(KeyError):
        a.get_xfer_descs([(1, 2, 0)], "BLK")
    assert a.get_xfer_descs([(1, 2, 0, "x")], "DRAM") is None
    assert a.get_reg_descs([(1, 2, 0)], "DRAM") is None
    with pytest.raises(nixlMismatchError):
        a.add_remote_agent(b"garbage")
    with pytest.raises(nixlInvalidParamError):
        a.add_remote_agent(a.get_agent_metadata())
    with pytest.raises(nixlNotSupportedError):
        a.fetch_remote_metadata("b", "127.0.0.1", 8888)

    ma, mb = nixl_utils.malloc_passthru(4096), nixl_utils.malloc_passthru(4096)
    ra = a.register_memory([(ma, 4096, 0, "")], "DRAM")
    rb = b.register_memory([(mb, 4096, 0, "")], "DRAM")
    assert a.add_remote_agent(b.get_agent_metadata()) == b"b"
    local = a.get_xfer_descs([(ma, 4096, 0)], "DRAM")
    with pytest.raises(nixlNotFoundError, match="unknown remote agent"):
        a.initialize_xfer("WRITE", local, b.get_xfer_descs([(mb, 4096, 0)], "DRAM"), "c")
    with pytest.raises(nixlNotFoundError, match="not in memory"):
        a.initialize_xfer("WRITE", local, a.get_xfer_descs([(mb + 4096, 8, 0)], "DRAM"), "b")
    with pytest.raises(nixlInvalidParamError):
        a.initialize_xfer("WRITE", local, a.get_xfer_descs([(mb, 2048, 0)], "DRAM"), "b")
    with pytest.raises(KeyError):
        a.initialize_xfer("WR", local, a.get_xfer_descs([(mb, 4096, 0)], "DRAM"), "b")
    h = a.initialize_xfer("WRITE", local, a.get_xfer_descs([(mb, 4096, 0)], "DRAM"), "b", "done")
    with pytest.raises(nixlNotPostedError):
        a.check_xfer_state(h)
    with pytest.raises(nixlNoTelemetryError):
        b.get_xfer_telemetry(h)
    assert a.transfer(h) in ("DONE", "PROC")
    while a.check_xfer_state(h) != "DONE":
        pass
    tel = a.get_xfer_telemetry(h)
    assert tel.totalBytes == 4096 and tel.descCount == 1 and tel.xferDuration >= 0
    assert b.check_remote_xfer_done("a", b"do")
    assert not b.check_remote_xfer_done("a", b"do")
    a.release_xfer_handle(h)
    a.release_xfer_handle(h)  # idempotent
    with pytest.raises(nixlInvalidParamError):
        a.transfer(h)
    a.remove_remote_agent("b")
    a.remove_remote_agent("nobody")  # silently, as NIXL
    with pytest.raises(nixlNotFoundError):
        a.send_notif("b", b"x")
    a.deregister_memory(ra)
    b.deregister_memory(rb)
    with pytest.raises(nixlNotFoundError):
        a.deregister_memory(ra)
    for agent in (a, b):
        agent.engine.check_quiescent()
        agent.close()
    nixl_utils.free_passthru(ma)
    nixl_utils.free_passthru(mb)


def test_repost_while_in_flight_is_refused(tmp_path):
    # A file transfer large enough to be in flight when reposted.
    agent = nixl_agent("big", nixl_agent_config(backends=["POSIX"]))
    size = 64 << 20
    mem = nixl_utils.malloc_passthru(size)
    fd = os.open(tmp_path / "big.bin", os.O_RDWR | os.O_CREAT)
    os.ftruncate(fd, size)
    dram = agent.register_memory([(mem, size, 0, "")], "DRAM")
    files = agent.register_memory([(0, size, fd, "")], "FILE")
    h = agent.initialize_xfer("WRITE", agent.get_xfer_descs([(mem, size, 0)], "DRAM"), files.trim(), "big")
    refused = False
    if agent.transfer(h) == "PROC":
        try:
            agent.transfer(h)
        except nixlRepostActiveError:
            refused = True
    while agent.check_xfer_state(h) == "PROC":
        pass
    assert agent.check_xfer_state(h) == "DONE"
    if not refused:
        pytest.skip("the 64 MiB write ended before it could be reposted")
    agent.release_xfer_handle(h)
    agent.deregister_memory(files)
    agent.deregister_memory(dram)
    agent.close()
    os.close(fd)
    nixl_utils.free_passthru(mem)
