"""No leak: 200,000 Python-level transfers end with the ledger at zero and the
process's resident memory flat."""

import gc

import ringxfer


def rss_kib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4


def test_200k_transfers_leave_nothing_behind():
    a = ringxfer.Engine(name="a", capacity=64)
    b = ringxfer.Engine(name="b", capacity=64)
    src = bytearray(4096)
    s = a.register(src)
    d = b.alloc_region(4096)
    peer = a.load_peer(b.local_metadata())
    lst = a.prepare_list("WRITE", [(s, 0, 4096)], peer, [(d, 0, 4096)])
    L, R = [(s, 0, 4096)], [(d, 0, 4096)]

    def batch(n):
        for i in range(n):
            if i % 4 == 0:
                with a.transfer("READ", L, peer, R) as t:
                    t.post()
                    t.wait()
            elif i % 4 == 1:
                h = a.post_list(lst, b"n" if i % 64 == 1 else None)
                a.wait(h)
                a.release(h)
                if i % 64 == 1:
                    assert b.pop_notifications() == [("a", b"n")]
            else:
                h = a.prepare("WRITE", L, peer, R)
                a.post(h)
                a.wait(h)
                a.release(h)

    batch(20_000)  # warm-up: caches and arenas settle
    gc.collect()
    before = rss_kib()
    for _ in range(9):
        batch(20_000)
    gc.collect()
    grew = rss_kib() - before
    st = a.stats()
    assert st["acquired"] == st["freed"] == 200_000
    assert st["done"] == 200_000 and st["live"] == 0
    assert grew < 1024, f"resident memory grew {grew} KiB over 180,000 transfers"
    a.release_list(lst)
    a.check_quiescent()
    b.check_quiescent()
    assert a.close()["live"] == 0
    b.close()
