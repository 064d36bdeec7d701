"""Several processes on torch.distributed (the engine training uses): who this process is, its share
of the work, and the gathering of results on rank 0.

Launched by ``torchrun --nproc_per_node P [--nnodes N ...] -m ddpm_codec.cli.main ...`` (or by the
commands' ``--workers P``, which starts them on this machine the same way), every process runs
the same command; :func:`init` joins the process group (gloo for the coding and evaluation
commands: what they exchange are Python objects on the CPU). Outside a launch everything here is
the one-process identity: rank 0 of 1.

:func:`map_rounds` is the one pattern the sharded commands use: the items not yet done are taken in
rounds of ``per_rank × world`` consecutive items, rank ``r`` computes the ``r``-th block of each round,
and rank 0 receives every round's results in item order (``torch.distributed.gather_object``) and
writes them before the next round. So what rank 0 has written is always a prefix of the items,
and a stopped run resumes from it exactly as a one-process run does.
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Callable, Sequence


ROUND_ITEMS = 4   # items per rank a round at least: ranks wait for each other at every round's end, and
                  # images' times differ (one image a round lost ~10 % to that wait on 2 ranks)


def rank_world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a process group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def launched() -> bool:
    """Whether this process was started by torchrun (or ``--workers``) as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(backend: str | None = None, device: torch.device | None = None) -> bool:
    """Join the process group when launched (``backend`` default: NCCL for a CUDA ``device``, else
    gloo); True when in one."""
    import torch.distributed as dist

    if not launched() or dist.is_initialized():
        return dist.is_available() and dist.is_initialized()
    if backend is None:
        backend = "nccl" if device is not None and device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return True


def finish() -> None:
    """Leave the process group (after the last collective call)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def local_device(name: str) -> str:
    """``cuda`` as this process's own GPU (``cuda:LOCAL_RANK``) in a launch; other names unchanged."""
    if name == "cuda" and launched():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return name


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    import torch.distributed as dist

    if rank_world()[1] == 1:
        return obj
    box = [obj]
    with _peers_alive():
        dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj: Any) -> list[Any] | None:
    """Every rank's ``obj`` in rank order, on rank 0 (None on the others)."""
    import torch.distributed as dist

    rank, world = rank_world()
    if world == 1:
        return [obj]
    out = [None] * world if rank == 0 else None
    with _peers_alive():
        dist.gather_object(obj, out, dst=0)
    return out


@contextlib.contextmanager
def _peers_alive():
    """A collective call whose peer has died (gloo: "Connection closed by peer") raises a one-line
    :class:`ddpm_codec.errors.Error` on this rank instead of a traceback: the dead rank printed why."""
    from .errors import Error

    try:
        yield
    except RuntimeError as e:
        if "closed by peer" not in str(e) and "Connection reset" not in str(e):
            raise
        raise Error(f"rank {rank_world()[0]}: stopped, another worker failed") from None


def share(n: int, rank: int | None = None, world: int | None = None) -> range:
    """This rank's contiguous block of ``range(n)`` (blocks differ in length by at most one)."""
    r, w = rank_world()
    rank, world = r if rank is None else rank, w if world is None else world
    return range(n * rank // world, n * (rank + 1) // world)


def map_rounds(num_items: int, done: int, work: Callable[[Sequence[int]], list], per_rank: int,
               write: Callable[[list], None], advance: Callable[[int], None] | None = None) -> None:
    """Items ``done .. num_items - 1`` in rounds: ``work(indices)`` (this rank's block of the round,
    possibly empty) returns one result per index; rank 0 calls ``write(results)`` with the round's
    results of all ranks in item order, then ``advance(k)`` with the round's item count."""
    rank, world = rank_world()
    per_rank = max(1, int(per_rank))
    for start in range(done, num_items, per_rank * world):
        size = min(per_rank * world, num_items - start)   # a short last round is shared out evenly too
        block = share(size, rank, world)
        mine = list(range(start + block.start, start + block.stop))
        results = work(mine) if mine else []
        parts = gather(results)
        if rank == 0:
            write([r for part in parts for r in part])
            if advance:
                advance(min(num_items, start + per_rank * world) - start)


def launch_workers(workers: int, argv: Sequence[str] | None = None) -> None:
    """Run this command (``argv``, default ``sys.argv[1:]``) in ``workers`` processes on this machine,
    as ``torchrun --standalone --nproc_per_node workers -m ddpm_codec.cli.main ...`` would: each
    process gets the variables torchrun sets (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
    ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT`` of a free local port) and joins the group by
    torch.distributed's ``env://`` rendezvous, rank 0 holding the store; each uses ``cores / workers``
    threads unless ``OMP_NUM_THREADS`` says otherwise. Unlike torchrun this launcher does not import
    torch (its elastic agent took ~1.3 s before the workers started, of a ~30 s run on 16 images:
    docs/results/scale.md). When a worker fails the others are stopped; raises
    :class:`ddpm_codec.errors.Error` (the worker's own message is printed above). Ctrl-C stops all."""
    import signal
    import socket
    import subprocess
    import time

    from .errors import Error

    argv = list(sys.argv[1:] if argv is None else argv)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(workers),
            "LOCAL_WORLD_SIZE": str(workers), "GROUP_RANK": "0"}
    base.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    procs = [subprocess.Popen([sys.executable, "-m", "ddpm_codec.cli.main", *argv],
                              env={**base, "RANK": str(r), "LOCAL_RANK": str(r)}) for r in range(workers)]

    def stop(sig):
        for q in procs:
            if q.poll() is None:
                q.send_signal(sig)
        for q in procs:
            try:
                q.wait(timeout=30)
            except subprocess.TimeoutExpired:
                q.kill()
                q.wait()
    try:
        while True:
            codes = [q.poll() for q in procs]
            failed = [c for c in codes if c not in (None, 0)]
            if failed:                                     # the others would wait for it forever
                stop(signal.SIGTERM)
                raise Error(f"{len(failed)} of {workers} worker(s) failed (exit "
                            f"{', '.join(map(str, sorted(set(failed))))}); their messages are above")
            if all(c == 0 for c in codes):
                return
            time.sleep(0.05)
    except KeyboardInterrupt:
        stop(signal.SIGINT)
        raise
