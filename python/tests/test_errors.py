"""Every error kind has its own exception class under ringxfer.Error; bad input is a
typed exception, never a crash, and leaves the engine whole."""

import pytest

import ringxfer

KINDS = """RingFull CompletionQueueFull StaleHandle InvalidHandle WrongState InvalidCapacity
InvalidConfig InvalidDescriptor UnknownRegion OutOfBounds Busy RegistryFull OutOfMemory
LengthMismatch TooManyDescriptors TooManyBlocks UnknownList ListTableFull UnknownPeer
PeerTableFull NotificationTooLarge InboxFull BufferTooSmall MetadataError PeerLost
CudaUnavailable CudaError NotOnFabric FabricUnavailable FabricError PeerUnreachable IoError
KvFull KeyTooLong ValueTooLarge TransferFailed Poisoned NotQuiescent Timeout MetadataStoreError NameTaken Closed""".split()


def test_every_kind_is_its_own_subclass_of_error():
    classes = [getattr(ringxfer, k) for k in KINDS]
    assert len(set(classes)) == len(KINDS)
    for c in classes:
        assert issubclass(c, ringxfer.Error) and c is not ringxfer.Error
    assert issubclass(ringxfer.Error, Exception)
    assert issubclass(ringxfer.BadBuffer, ringxfer.Error) and issubclass(ringxfer.BadBuffer, TypeError)


@pytest.fixture
def engines():
    a = ringxfer.Engine(name="a", capacity=2, max_descs_per_xfer=2, max_registrations=4,
                        max_notif_bytes=16, completion_queue=2, max_prepared_lists=1)
    b = ringxfer.Engine(name="b", inbox_capacity=1)
    src = bytearray(4096)
    s = a.register(src)
    d = b.alloc_region(4096)
    peer = a.load_peer(b.local_metadata())
    yield a, b, s, d, peer
    for e in (a, b):
        if not e.closed:
            e.check_quiescent()  # nothing was lost to the errors
            e.close()


def test_bad_handles_descriptors_and_states(engines):
    a, b, s, d, peer = engines
    ok = [(s, 0, 64)], peer, [(d, 0, 64)]
    with pytest.raises(ringxfer.InvalidHandle):
        a.status(1 << 19)  # an index past the capacity
    with pytest.raises(ringxfer.StaleHandle):
        a.post((5 << 20) | 0)
    h = a.prepare("WRITE", *ok)
    h2 = a.prepare("WRITE", *ok)
    with pytest.raises(ringxfer.RingFull):
        a.prepare("WRITE", *ok)
    a.post(h)
    assert a.wait(h) == "DONE"
    with pytest.raises(ringxfer.WrongState):
        a.post(h)
    a.release(h)
    with pytest.raises(ringxfer.StaleHandle):
        a.release(h)
    a.release(h2)
    with pytest.raises(ringxfer.OutOfBounds):
        a.prepare("WRITE", [(s, 4000, 200)], peer, [(d, 0, 200)])
    with pytest.raises(ringxfer.UnknownRegion):
        a.prepare("WRITE", [(12345, 0, 64)], peer, [(d, 0, 64)])
    with pytest.raises(ringxfer.UnknownPeer):
        a.prepare("WRITE", [(s, 0, 64)], 77, [(d, 0, 64)])
    with pytest.raises(ringxfer.LengthMismatch):
        a.prepare("WRITE", [(s, 0, 64)], peer, [(d, 0, 32)])
    with pytest.raises(ringxfer.TooManyDescriptors):
        a.prepare("WRITE", [(s, 0, 8)] * 3, peer, [(d, 0, 8)] * 3)
    with pytest.raises(ringxfer.InvalidDescriptor, match="needs descriptors"):
        a.prepare("WRITE", [], peer, [])
    with pytest.raises(ringxfer.NotificationTooLarge):
        a.prepare("WRITE", *ok, notif=b"x" * 17)
    assert a.stats()["live"] == 0


def test_wrong_python_types_are_type_errors(engines):
    a, b, s, d, peer = engines
    with pytest.raises(TypeError, match="region, offset, length"):
        a.prepare("WRITE", [("s", 0, 64)], peer, [(d, 0, 64)])
    with pytest.raises(TypeError, match="region, offset, length"):
        a.prepare("WRITE", [(s, -1, 64)], peer, [(d, 0, 64)])
    with pytest.raises(TypeError):
        a.prepare("WRITE", 42, peer, [(d, 0, 64)])
    with pytest.raises(ValueError, match="WRITE"):
        a.prepare("COPY", [(s, 0, 64)], peer, [(d, 0, 64)])
    with pytest.raises(TypeError):
        a.status("handle")
    with pytest.raises(OverflowError):
        a.status(-1)
    with pytest.raises(TypeError):
        a.notify(peer, 12)
    with pytest.raises(TypeError, match="unknown Engine option"):
        ringxfer.Engine(capcity=4)
    with pytest.raises(TypeError, match="capacity"):
        ringxfer.Engine(capacity="big")
    with pytest.raises(TypeError, match="fabric"):
        ringxfer.Engine(fabric=3)
    with pytest.raises(TypeError, match="unknown fabric option"):
        ringxfer.Engine(fabric={"provder": "tcp"})
    with pytest.raises(ValueError, match="seconds"):
        ringxfer.Engine(deadline=-1.0)
    with pytest.raises(ringxfer.BadBuffer):
        a.register(b"read-only bytes")
    with pytest.raises(ringxfer.BadBuffer):
        a.register(memoryview(b"read-only"))
    with pytest.raises(ringxfer.BadBuffer):
        a.register(bytearray())
    with pytest.raises(ringxfer.BadBuffer):
        a.register(object())
    with pytest.raises(TypeError):
        a.pop_notification(bytes(16))  # not a bytearray
    assert a.stats()["live"] == 0


def test_limits_and_metadata(engines):
    a, b, s, d, peer = engines
    with pytest.raises(ringxfer.InvalidConfig, match="capacity"):
        ringxfer.Engine(capacity=3)
    with pytest.raises(ringxfer.MetadataError):
        a.load_peer(b"not metadata")
    with pytest.raises(ringxfer.MetadataError):
        a.load_peer(b.local_metadata()[:-3])
    regs = []
    with pytest.raises(ringxfer.RegistryFull):
        while True:
            regs.append(a.alloc_region(64))
    for r in regs:
        a.deregister(r)
    lst = a.prepare_list("WRITE", [(s, 0, 64)], peer, [(d, 0, 64)])
    with pytest.raises(ringxfer.ListTableFull):
        a.prepare_list("WRITE", [(s, 0, 64)], peer, [(d, 0, 64)])
    with pytest.raises(ringxfer.Busy):
        a.deregister(s)
    a.release_list(lst)
    with pytest.raises(ringxfer.UnknownList):
        a.post_list(lst)
    a.notify(peer, b"1")
    with pytest.raises(ringxfer.InboxFull):
        a.notify(peer, b"2")
    with pytest.raises(ringxfer.BufferTooSmall):
        b.pop_notification(bytearray(0))
    assert b.pop_notifications() == [("a", b"1")]
    hs = []
    for _ in range(2):
        h = a.prepare("WRITE", [(s, 0, 64)], peer, [(d, 0, 64)])
        hs.append(h)
    a.report_completion(hs[0])
    a.report_completion(hs[1])
    for h in hs:
        a.release(h)  # released before posting: their tickets come back
    with pytest.raises(ringxfer.IoError, match="refused"):
        a.fetch_peer("127.0.0.1:1")
    with pytest.raises(ringxfer.CudaUnavailable if not _has_cuda() else ringxfer.Error):
        a.alloc_vram(4096)


def _has_cuda():
    try:
        ringxfer.Engine(cuda=True).close()
        return True
    except ringxfer.Error:
        return False


def test_a_closed_engine_raises_closed():
    e = ringxfer.Engine()
    e.close()
    for call in (lambda: e.alloc_region(64), lambda: e.prepare("WRITE", [], 0, []), lambda: e.wait(1),
                 lambda: e.local_metadata(), lambda: e.register(bytearray(8))):
        with pytest.raises(ringxfer.Closed):
            call()


def test_timeout_leaves_the_transfer_going(tmp_path):
    e = ringxfer.Engine(file_workers=1)
    h_mem = e.register(bytearray(1 << 20))
    f = e.register(tmp_path / "f", writable=True, create=True, length=1 << 20)
    h = e.prepare("WRITE", [(h_mem, 0, 1 << 20)], e.local_peer(), [(f, 0, 1 << 20)])
    with pytest.raises(ringxfer.Timeout):
        e.wait(h, timeout=0)  # reserved, never posted: cannot end
    e.post(h)
    assert e.wait(h, timeout=10) == "DONE"
    e.release(h)
    e.close()
