"""Two engines in two processes: WRITE and READ through the local transport's
shared memory, bytes checked, a notification on landing."""

import multiprocessing as mp

import ringxfer


def target(conn):
    e = ringxfer.Engine(name="target")
    region = e.alloc_region(1 << 20)
    e.write_region(region, 0, bytes(range(256)) * 4096)
    server = e.serve_metadata()
    conn.send((server.address, region))
    # Wait for the initiator's notification, then report what landed.
    buf = bytearray(e.config()["max_notif_bytes"])
    while True:
        got = e.pop_notification(buf)
        if got is not None:
            break
    sender, n = got
    conn.send((e.sender_name(sender), bytes(buf[:n]), e.read_region(region, 0, 4096)))
    conn.recv()  # until the initiator is done
    server.close()
    conn.send(e.close()["live"])


def test_two_processes():
    ctx = mp.get_context("spawn")
    here, there = ctx.Pipe()
    child = ctx.Process(target=target, args=(there,))
    child.start()
    try:
        addr, region = here.recv()
        e = ringxfer.Engine(name="initiator")
        buf = bytearray(b"\xab" * 4096)
        s = e.register(buf)
        peer = e.fetch_peer(addr)
        assert e.peer_name(peer) == "target"
        # READ what the target wrote.
        h = e.prepare("READ", [(s, 0, 4096)], peer, [(region, 4096, 4096)])
        e.post(h)
        assert e.wait(h, timeout=10) == "DONE"
        e.release(h)
        assert buf == bytes(range(256)) * 16
        # WRITE over it, with a notification.
        buf[:] = b"\x5a" * 4096
        h = e.prepare("WRITE", [(s, 0, 4096)], peer, [(region, 0, 4096)], notif=b"landed")
        e.post(h)
        assert e.wait(h, timeout=10) == "DONE"
        e.release(h)
        name, note, landed = here.recv()
        assert (name, note, landed) == ("initiator", b"landed", b"\x5a" * 4096)
        e.check_quiescent()
        e.close()
        here.send("done")
        assert here.recv() == 0
    finally:
        child.join(30)
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0
