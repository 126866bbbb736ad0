"""Engine(etcd=...) against a real etcd server of the test's own: discovery by name,
a duplicate name refused, the store's errors. Needs the package built with the
`etcd` feature and an `etcd` binary; RINGXFER_REQUIRE_ETCD=1 (CI) turns a skip
into a failure."""

import os
import shutil
import socket
import subprocess
import tempfile
import time

import pytest

import ringxfer


def _skip(why):
    if os.environ.get("RINGXFER_REQUIRE_ETCD"):
        pytest.fail(f"RINGXFER_REQUIRE_ETCD is set: {why}")
    pytest.skip(why)


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def etcd():
    if not ringxfer._native.HAS_ETCD:
        _skip('ringxfer was built without etcd: MATURIN_PEP517_ARGS="--features etcd" pip install ./python')
    if shutil.which("etcd") is None:
        _skip("etcd not found (Debian: apt-get install etcd-server)")
    data = tempfile.mkdtemp(prefix="ringxfer-etcd-py-")
    client, peer = f"http://127.0.0.1:{_port()}", f"http://127.0.0.1:{_port()}"
    proc = subprocess.Popen(
        ["etcd", "--name", "default", "--data-dir", data, "--listen-client-urls", client,
         "--advertise-client-urls", client, "--listen-peer-urls", peer,
         "--initial-advertise-peer-urls", peer, "--initial-cluster", f"default={peer}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                ringxfer.Engine(name="probe", etcd={"endpoints": [client], "namespace": "/probe"}).close()
                break
            except ringxfer.MetadataStoreError:
                assert time.monotonic() < deadline, "etcd did not start"
                time.sleep(0.1)
        yield client
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(data, ignore_errors=True)


def test_engines_find_each_other_by_name(etcd):
    opts = {"endpoints": etcd, "namespace": "/py", "ttl": 2, "timeout": 1}
    with ringxfer.Engine(name="a", etcd=opts) as a, ringxfer.Engine(name="b", etcd=opts) as b:
        dst = b.alloc_region(4096)
        src = a.register(bytearray(b"\x42" * 4096))
        assert sorted(a.list_peers()) == ["a", "b"]
        peer = a.fetch_peer_by_name("b")
        assert a.peer_by_name("b") == peer and a.peer_name(peer) == "b"
        # `dst` reaches `a` when b re-publishes (within 100 ms) and a's watch reloads it.
        deadline = time.monotonic() + 5
        while True:
            try:
                t = a.transfer("WRITE", [(src, 0, 4096)], peer, [(dst, 0, 4096)])
                break
            except ringxfer.UnknownRegion:
                assert time.monotonic() < deadline, a.cluster_stats()
                time.sleep(0.01)
        assert a.peer_by_name("b") == peer, "a reload keeps the id"
        with t:
            t.post()
            assert t.wait(timeout=5) == "DONE"
        assert b.read_region(dst, 0, 4096) == b"\x42" * 4096
        with pytest.raises(ringxfer.NameTaken):
            ringxfer.Engine(name="b", etcd=opts)
        with pytest.raises(ringxfer.MetadataStoreError, match="nobody"):
            a.fetch_peer_by_name("nobody")
        assert a.cluster_stats()["connected"] is True
    # Closed engines left: their keys went with their leases.
    with ringxfer.Engine(name="c", etcd=opts) as c:
        assert c.list_peers() == ["c"]


def test_bad_cluster_options(etcd):
    with pytest.raises(TypeError, match="unknown etcd option"):
        ringxfer.Engine(etcd={"endpoint": etcd})
    with pytest.raises(ringxfer.InvalidConfig, match="namespace"):
        ringxfer.Engine(etcd={"endpoints": etcd, "namespace": "no-slash"})
    with pytest.raises(ringxfer.MetadataStoreError, match="127.0.0.1:1"):
        ringxfer.Engine(name="x", etcd={"endpoints": "127.0.0.1:1", "timeout": 0.3})
    e = ringxfer.Engine()
    with pytest.raises(ringxfer.MetadataStoreError, match="no cluster"):
        e.fetch_peer_by_name("a")
    e.close()
