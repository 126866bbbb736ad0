"""``python -m ringxfer.bench``: what a transfer costs from Python.

The same sweep and columns as ``ringxfer-bench --two-process`` (local transport,
the target engine in a child process): for each block size, the prepare → post →
wait → release cycle one transfer at a time, its GB/s and latency, the prepare,
post and transfer times of one transfer in 8, and the ratio to a ``memmove`` loop
from Python between two buffers of this process (the Rust bench's baseline is a
``memcpy`` loop). ``--nixl`` runs NIXL's loop instead (``transfer`` +
``check_xfer_state`` through ``ringxfer.nixl``), ``--list`` posts a prepared list.
"""

from __future__ import annotations

import argparse
import ctypes
import multiprocessing as mp
import sys
import time
from typing import List, Tuple

import ringxfer


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper()
    if text and text[-1] in units:
        return int(text[:-1]) * units[text[-1]]
    return int(text)


def _fmt(n: int) -> str:
    for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return str(n)


def _target(conn, length: int) -> None:
    e = ringxfer.Engine(name="target")
    region = e.alloc_region(length)
    server = e.serve_metadata()
    conn.send((server.address, region))
    conn.recv()
    server.close()
    conn.send(e.close()["live"])


def _nixl_target(conn, length: int) -> None:
    from ringxfer.nixl import nixl_agent

    from .nixl import _utils

    agent = nixl_agent("target")
    mem = _utils.malloc_passthru(length)
    agent.register_memory([(mem, length, 0, "")], "DRAM")
    conn.send((agent.get_agent_metadata(), mem))
    conn.recv()
    conn.send(agent.close()["live"])


def _avg_p99(xs: List[float]) -> Tuple[float, float]:
    if not xs:
        return 0.0, 0.0
    xs = sorted(xs)
    return sum(xs) / len(xs), xs[min(len(xs) - 1, int(len(xs) * 0.99))]


def _memmove_gbps(dst: int, src: int, block: int, iters: int) -> float:
    move = ctypes.memmove
    t0 = time.perf_counter()
    for _ in range(iters):
        move(dst, src, block)
    return block * iters / (time.perf_counter() - t0) / 1e9


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ringxfer.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--start-block-size", default="4K")
    p.add_argument("--max-block-size", default="64M")
    p.add_argument("--num-iter", type=int, default=10000)
    p.add_argument("--warmup-iter", type=int, default=100)
    p.add_argument("--max-bytes-per-config", default="2G")
    p.add_argument("--op", choices=["write", "read"], default="write")
    p.add_argument("--list", action="store_true", help="post a prepared list instead of prepare/post")
    p.add_argument("--nixl", action="store_true", help="NIXL's transfer + check_xfer_state loop")
    a = p.parse_args(argv)
    start, stop = _size(a.start_block_size), _size(a.max_block_size)
    cap = _size(a.max_bytes_per_config)
    op = a.op.upper()

    ctx = mp.get_context("spawn")
    here, there = ctx.Pipe()
    child = ctx.Process(target=_nixl_target if a.nixl else _target, args=(there, stop))
    child.start()
    src_buf = bytearray(b"\x01" * stop)
    base_dst = bytearray(stop)
    src_addr = ctypes.addressof((ctypes.c_char * stop).from_buffer(src_buf))
    dst_addr = ctypes.addressof((ctypes.c_char * stop).from_buffer(base_dst))
    print(f"ringxfer {ringxfer.__version__} Python bench: two processes, local transport, {op}, window 1"
          + (", ringxfer.nixl loop" if a.nixl else ", prepared list" if a.list else ""))
    print(f"{'block':>8} {'batch':>6} {'iters':>7} {'GB/s':>9} {'lat us':>9} {'prepare avg/p99 us':>19} "
          f"{'post avg/p99 us':>19} {'transfer avg/p99 us':>19} {'memcpy GB/s':>11} {'ratio':>7}")
    try:
        if a.nixl:
            from ringxfer.nixl import nixl_agent

            meta, remote_addr = here.recv()
            agent = nixl_agent("initiator")
            agent.register_memory([(src_addr, stop, 0, "")], "DRAM")
            name = agent.add_remote_agent(meta)
        else:
            addr, region = here.recv()
            e = ringxfer.Engine(name="initiator")
            s = e.register(src_buf)
            peer = e.fetch_peer(addr)
        block = start
        while block <= stop:
            iters = max(1, min(a.num_iter, cap // block if cap else a.num_iter))
            prep: List[float] = []
            post: List[float] = []
            xfer: List[float] = []
            clock = time.perf_counter
            if a.nixl:
                h = agent.initialize_xfer(op, agent.get_xfer_descs([(src_addr, block, 0)], "DRAM"),
                                          agent.get_xfer_descs([(remote_addr, block, 0)], "DRAM"), name)
                transfer, check = agent.transfer, agent.check_xfer_state
                for _ in range(a.warmup_iter):
                    transfer(h)
                    while check(h) != "DONE":
                        pass
                t0 = clock()
                for _ in range(iters):
                    transfer(h)
                    while check(h) != "DONE":
                        pass
                wall = clock() - t0
                for _ in range(max(1, iters // 8)):
                    t1 = clock()
                    transfer(h)
                    t2 = clock()
                    while check(h) != "DONE":
                        pass
                    t3 = clock()
                    post.append((t2 - t1) * 1e6)
                    xfer.append((t3 - t1) * 1e6)
                agent.release_xfer_handle(h)
            else:
                L, R = [(s, 0, block)], [(region, 0, block)]
                prepare, post_, wait, release = e.prepare, e.post, e.wait, e.release
                lst = e.prepare_list(op, L, peer, R) if a.list else None
                post_list = e.post_list

                def cycle(n: int) -> None:
                    if lst is not None:
                        for _ in range(n):
                            h = post_list(lst)
                            wait(h)
                            release(h)
                    else:
                        for _ in range(n):
                            h = prepare(op, L, peer, R)
                            post_(h)
                            wait(h)
                            release(h)

                cycle(a.warmup_iter)
                t0 = clock()
                cycle(iters)
                wall = clock() - t0
                for _ in range(max(1, iters // 8)):
                    t1 = clock()
                    h = post_list(lst) if lst is not None else prepare(op, L, peer, R)
                    t2 = clock()
                    if lst is None:
                        post_(h)
                    t3 = clock()
                    wait(h)
                    t4 = clock()
                    release(h)
                    prep.append((t2 - t1) * 1e6)
                    post.append((t3 - t2) * 1e6)
                    xfer.append((t4 - t1) * 1e6)
                if lst is not None:
                    e.release_list(lst)
            gbps = block * iters / wall / 1e9
            mem = _memmove_gbps(dst_addr, src_addr, block, iters)
            pa, pp = _avg_p99(prep)
            qa, qp = _avg_p99(post)
            xa, xp = _avg_p99(xfer)
            print(f"{_fmt(block):>8} {1:>6} {iters:>7} {gbps:>9.3f} {wall / iters * 1e6:>9.2f} "
                  f"{pa:>9.3f}/{pp:<9.3f} {qa:>9.3f}/{qp:<9.3f} {xa:>9.3f}/{xp:<9.3f} {mem:>11.3f} "
                  f"{gbps / mem:>6.2f}x", flush=True)
            block *= 2
        if a.nixl:
            agent.close()
        else:
            e.check_quiescent()
            e.close()
        here.send("done")
        live = here.recv()
        if live:
            print(f"the target held {live} slots at exit", file=sys.stderr)
            return 1
    finally:
        child.join(30)
        if child.is_alive():
            child.kill()
    return 0 if child.exitcode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
