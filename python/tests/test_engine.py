"""The native API: transfers with bytes checked, lists, notifications, files,
completions, the key-value store, the ledger."""

import select
import threading
import time

import pytest

import ringxfer

try:
    import numpy as np  # noqa: F811
except ImportError:  # numpy is optional: its tests skip
    np = None


def pattern(n, seed=1):
    return bytearray((i * 7 + seed) % 251 for i in range(n))


def test_write_and_read_between_two_engines(pair):
    a, b, connect = pair
    src = pattern(8192)
    s = a.register(src)
    d = b.alloc_region(8192)
    peer = connect()
    h = a.prepare("WRITE", [(s, 0, 4096), (s, 4096, 4096)], peer, [(d, 0, 4096), (d, 4096, 4096)])
    a.post(h)
    assert a.wait(h, timeout=5) == "DONE"
    assert a.status(h) == "DONE"
    a.release(h)
    assert b.read_region(d, 0, 8192) == bytes(src)
    # READ back into another buffer.
    out = bytearray(8192)
    o = a.register(out)
    with a.transfer(ringxfer.READ, [(o, 0, 8192)], peer, [(d, 0, 8192)]) as t:
        t.post()
        assert t.wait() == "DONE"
    assert out == src
    a.deregister(s)
    a.deregister(o)


@pytest.mark.skipif(np is None, reason="numpy not installed")
def test_numpy_arrays_register_as_host_memory(pair):
    a, b, connect = pair
    src = np.arange(1024, dtype=np.float32)
    dst = np.zeros(1024, dtype=np.float32)
    s, d = a.register(src), b.register(dst)
    peer = connect()
    h = a.prepare("WRITE", [(s, 0, src.nbytes)], peer, [(d, 0, dst.nbytes)])
    a.post(h)
    assert a.wait(h) == "DONE"
    a.release(h)
    assert (dst == src).all()
    # A view that is not contiguous, and a read-only array, are refused.
    with pytest.raises(ringxfer.BadBuffer, match="non-contiguous"):
        a.register(np.zeros((8, 8))[:, 1])
    ro = np.zeros(16)
    ro.setflags(write=False)
    with pytest.raises(ringxfer.BadBuffer, match="read-only"):
        a.register(ro)


def test_a_registered_bytearray_cannot_be_resized(pair):
    a, _, _ = pair
    buf = bytearray(4096)
    r = a.register(buf)
    with pytest.raises(BufferError):
        buf.extend(b"x")
    a.deregister(r)
    buf.extend(b"x")  # let go of at deregistration


def test_transfer_object_releases_its_handle(pair):
    a, b, connect = pair
    s = a.register(bytearray(64))
    d = b.alloc_region(64)
    peer = connect()
    t = a.transfer("WRITE", [(s, 0, 64)], peer, [(d, 0, 64)])
    assert t.status() == "RESERVED"
    with t:
        t.post()
        assert t.wait() == "DONE"
    assert a.stats()["live"] == 0
    with pytest.raises(ringxfer.StaleHandle):
        t.release()
    # Dropped without release: released when collected.
    t2 = a.transfer("WRITE", [(s, 0, 64)], peer, [(d, 0, 64)])
    assert a.stats()["live"] == 1
    del t2
    assert a.stats()["live"] == 0


def test_prepared_lists(pair):
    a, b, connect = pair
    src = pattern(4 * 1024)
    s = a.register(src)
    d = b.alloc_region(4 * 1024)
    peer = connect()
    lst = a.prepare_list("WRITE", [(s, i * 1024, 1024) for i in range(4)], peer, [(d, (3 - i) * 1024, 1024) for i in range(4)])
    h = a.post_list(lst)
    assert a.wait(h) == "DONE"
    a.release(h)
    got = b.read_region(d, 0, 4096)
    assert [got[i * 1024:(i + 1) * 1024] for i in range(4)] == [bytes(src[(3 - i) * 1024:(4 - i) * 1024]) for i in range(4)]
    b.write_region(d, 0, bytes(4096))
    h = a.post_list_indices(lst, [1], b"one")
    assert a.wait(h) == "DONE"
    a.release(h)
    assert b.read_region(d, 2048, 1024) == bytes(src[1024:2048])
    assert b.read_region(d, 0, 1024) == bytes(1024)
    assert b.pop_notifications() == [("a", b"one")]
    with pytest.raises(ringxfer.Busy):
        a.deregister(s)  # the list pins it
    a.release_list(lst)
    with pytest.raises(ringxfer.UnknownList):
        a.release_list(lst)


def test_notifications_into_a_reused_buffer(pair):
    a, b, connect = pair
    peer = connect()
    for i in range(5):
        a.notify(peer, f"n{i}".encode())
    a.notify(peer, "text")
    buf = bytearray(b.config()["max_notif_bytes"])
    got = []
    while True:
        n = b.pop_notification(buf)
        if n is None:
            break
        sender, length = n
        assert b.sender_name(sender) == "a"
        got.append(bytes(buf[:length]))
    assert got == [b"n0", b"n1", b"n2", b"n3", b"n4", b"text"]
    with pytest.raises(ringxfer.NotificationTooLarge):
        a.notify(peer, bytes(100_000))


def test_files(tmp_path, pair):
    a, _, _ = pair
    path = tmp_path / "blocks.bin"
    f = a.register(path, writable=True, create=True, length=1 << 16)
    mem = pattern(1 << 16, seed=3)
    m = a.register(mem)
    me = a.local_peer()
    h = a.prepare("WRITE", [(m, 0, 1 << 16)], me, [(f, 0, 1 << 16)])
    a.post(h)
    assert a.wait(h, timeout=10) == "DONE"
    a.release(h)
    assert path.read_bytes() == bytes(mem)
    back = bytearray(1 << 16)
    bk = a.register(back)
    h = a.prepare("READ", [(bk, 0, 1 << 16)], me, [(f, 0, 1 << 16)])
    a.post(h)
    assert a.wait(h, timeout=10) == "DONE"
    a.release(h)
    assert back == mem
    with pytest.raises(ringxfer.IoError):
        a.register(tmp_path / "missing.bin")


def test_completion_queue_and_its_fd(pair):
    a, b, connect = pair
    s = a.register(bytearray(4096))
    d = b.alloc_region(4096)
    peer = connect()
    fd = a.completion_fd()
    handles = []
    for tag in range(3):
        h = a.prepare("WRITE", [(s, 0, 4096)], peer, [(d, 0, 4096)])
        a.report_completion(h, tag=100 + tag)
        a.post(h)
        handles.append(h)
    assert a.wait_any(timeout=5)
    r, _, _ = select.select([fd], [], [], 5)
    assert r == [fd]
    done = []
    while len(done) < 3:
        done += a.poll_completions()
    assert sorted(done) == sorted((h, "DONE", 100 + i) for i, h in enumerate(handles))
    for h in handles:
        a.release(h)
    assert not a.wait_any(timeout=0.01)


def test_kv_store(tmp_path):
    e = ringxfer.Engine(name="kv")
    mem = pattern(4 * 4096)
    m = e.register(mem)
    out = bytearray(4096)
    o = e.register(out)
    with ringxfer.KvStore(e, tmp_path / "kv", blocks_per_file=8, block_size=4096, max_key_len=32) as kv:
        assert kv.capacity == 8
        kv.set("k0", (m, 0, 4096))
        assert kv.exists("k0") and len(kv) == 1
        assert kv.get("k0", (o, 0, 4096)) == 4096
        assert out == mem[:4096]
        kv.batch_set([(f"b{i}", (m, i * 4096, 1000 + i)) for i in range(3)])
        assert kv.batch_get([("b2", (o, 0, 4096)), ("nope", (o, 0, 4096))]) == [1002, None]
        assert out[:1002] == mem[2 * 4096:2 * 4096 + 1002]
        assert kv.remove("b0") and not kv.exists("b0") and not kv.remove("b0")
        with pytest.raises(ringxfer.KeyTooLong):
            kv.set("k" * 33, (m, 0, 1))
        with pytest.raises(ringxfer.ValueTooLarge):
            kv.set("big", (m, 0, 8192))
        with pytest.raises(ringxfer.Busy):
            e.close()  # the store still uses the engine
        for i in range(5):
            kv.set(f"f{i}", (m, 0, 10))
        with pytest.raises(ringxfer.KvFull):
            kv.set("one-too-many", (m, 0, 10))
    with pytest.raises(ringxfer.Closed):
        kv.exists("k0")
    e.deregister(m)
    e.deregister(o)
    e.check_quiescent()
    assert e.close()["live"] == 0


def test_stats_and_ledger(pair):
    a, b, connect = pair
    s = a.register(bytearray(64))
    d = b.alloc_region(64)
    peer = connect()
    for _ in range(10):
        h = a.prepare("WRITE", [(s, 0, 64)], peer, [(d, 0, 64)])
        a.post(h)
        a.wait(h)
        a.release(h)
    st = a.stats()
    assert st["acquired"] == st["freed"] == 10 and st["done"] == 10 and st["live"] == 0
    h = a.prepare("WRITE", [(s, 0, 64)], peer, [(d, 0, 64)])
    with pytest.raises(ringxfer.NotQuiescent, match="1 transfer slot"):
        a.check_quiescent()
    assert a.cancel(h) == "CANCELLED"
    assert a.status(h) == "CANCELLED"
    a.release(h)
    a.check_quiescent()
    final = a.close()
    assert final["cancelled"] == 1 and final["live"] == 0
    assert a.close() is None
    with pytest.raises(ringxfer.Closed):
        a.stats()


def test_metadata_server_and_fetch_peer():
    a = ringxfer.Engine(name="client")
    b = ringxfer.Engine(name="server")
    server = b.serve_metadata()
    peer = a.fetch_peer(server.address)
    assert a.peer_name(peer) == "server"
    # The server counts a request once its answer is sent: the client may be first.
    deadline = time.monotonic() + 5
    while server.counters()[0] < 1 and time.monotonic() < deadline:
        time.sleep(0.001)
    assert server.counters()[0] == 1
    server.close()
    with pytest.raises(ringxfer.Closed):
        server.address
    a.close()
    b.close()


def test_the_gil_is_released_while_waiting():
    e = ringxfer.Engine(name="gil")
    ticks = 0
    stop = threading.Event()

    def spin():
        nonlocal ticks
        while not stop.is_set():
            ticks += 1

    t = threading.Thread(target=spin)
    t.start()
    time.sleep(0.05)
    before = ticks
    assert not e.wait_any(timeout=0.5)  # nothing to complete: waits the whole time
    during = ticks - before
    stop.set()
    t.join()
    # With the GIL held for 0.5 s the other thread would make (almost) no progress.
    assert during > 10_000, during
    e.close()


def test_completions_through_asyncio(pair):
    import asyncio

    a, b, connect = pair
    s = a.register(bytearray(4096))
    d = b.alloc_region(4096)
    peer = connect()

    async def run():
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        loop.add_reader(a.completion_fd(), ready.set)
        try:
            h = a.prepare("WRITE", [(s, 0, 4096)], peer, [(d, 0, 4096)])
            a.report_completion(h, tag=7)
            a.post(h)
            await asyncio.wait_for(ready.wait(), 5)
            got = a.poll_completions()
            for handle, _, _ in got:
                a.release(handle)
            return got, h
        finally:
            loop.remove_reader(a.completion_fd())

    got, h = asyncio.run(run())
    assert got == [(h, "DONE", 7)]


def test_the_readme_example_runs():
    import pathlib
    import re

    readme = (pathlib.Path(__file__).parents[2] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert blocks, "no Python example in the README"
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {})


@pytest.mark.skipif(np is None or not hasattr(np.ndarray, "__dlpack__"), reason="numpy with DLPack")
def test_dlpack_exporters_register_without_their_library(pair):
    a, b, connect = pair

    class OnlyDLPack:
        """Exports its memory through DLPack alone (no buffer protocol)."""

        def __init__(self, array):
            self.array = array

        def __dlpack__(self, **kw):
            return self.array.__dlpack__(**kw)

        def __dlpack_device__(self):
            return self.array.__dlpack_device__()

    src = np.arange(512, dtype=np.int64)
    s = a.register(OnlyDLPack(src))
    d = b.alloc_region(4096)
    peer = connect()
    h = a.prepare("WRITE", [(s, 0, 4096)], peer, [(d, 0, 4096)])
    a.post(h)
    assert a.wait(h) == "DONE"
    a.release(h)
    assert b.read_region(d, 0, 4096) == src.tobytes()
    with pytest.raises(ringxfer.BadBuffer, match="non-contiguous"):
        a.register(OnlyDLPack(np.arange(64, dtype=np.int64).reshape(8, 8)[:, ::2]))


def test_cuda_arrays_are_gpu_memory():
    class FakeCudaArray:
        __cuda_array_interface__ = {"data": (0x7F0000000000, False), "shape": (256,), "typestr": "<f4",
                                    "strides": None, "version": 3}

    e = ringxfer.Engine()  # no cuda: GPU memory is refused, typed
    with pytest.raises(ringxfer.CudaUnavailable):
        e.register(FakeCudaArray())
    ro = FakeCudaArray()
    ro.__cuda_array_interface__ = dict(FakeCudaArray.__cuda_array_interface__, data=(0x7F0000000000, True))
    with pytest.raises(ringxfer.BadBuffer, match="read-only"):
        e.register(ro)
    e.check_quiescent()
    e.close()
