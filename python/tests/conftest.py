import pytest

import ringxfer


@pytest.fixture
def pair():
    """Two engines in this process, and `connect()`, which loads `b` into `a` as a
    peer (metadata is a snapshot: connect once `b`'s regions exist)."""
    a = ringxfer.Engine(name="a", capacity=64)
    b = ringxfer.Engine(name="b", capacity=64)
    yield a, b, lambda: a.load_peer(b.local_metadata())
    for e in (a, b):
        if not e.closed:
            e.check_quiescent()
            e.close()
