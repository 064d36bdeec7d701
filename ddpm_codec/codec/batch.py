"""Several images coded in one process with their network calls batched: at each step the tiles of
the images coded together (up to ``batch`` tiles in all) go through the network as one call.

Each image runs the ordinary per-image :func:`.api.encode` / :func:`.api.decode` (the same chain
step, the same bytes), in a thread of its own; the images' chains advance in lock-step because a
network call returns only when every image still running has asked for its own (:class:`SharedNet`),
and then all the calls go through the network as one batch. Exact outputs never depend on the
batch (every sum is exact), so a file's bytes are those of the one-image-at-a-time path (tested);
float profiles' CPU outputs did not depend on it either in the tests of
:data:`.chain.TILES_PER_CALL`, and a file's checksum turns any difference into an error. Between
the network calls the images' own work (the encoder's trellis search, the range coder) runs in
their threads concurrently (the compiled search and torch release the GIL).
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import torch

from ..arithmetic import Arithmetic
from ..models.checkpoint import LoadedModel
from .chain import Net

DEFAULT_BATCH = 16   # tiles per network call when images are batched (--batch)


class SharedNet:
    """One network for ``members`` callers: each caller's ``member(i)`` is a :class:`.chain.Net`
    look-alike whose call blocks until every live member has called (or left); then the calls run
    as one batch (grouped by time step) in pieces of ``batch`` tiles."""

    def __init__(self, model: LoadedModel, arith: Arithmetic | bool, threads: int | None, members: int,
                 batch: int = DEFAULT_BATCH):
        self.net = Net(model, arith, threads)
        self.batch = max(1, int(batch))
        self.live = members
        self.cond = threading.Condition()
        self.pending: dict[int, tuple[torch.Tensor, int]] = {}
        self.results: dict[int, torch.Tensor] = {}
        self.error: BaseException | None = None
        self.round = 0
        self.calls = 0                       # batched network calls made (rounds)
        self.spent = [0.0] * members         # each member's share of the network's seconds (by tiles)

    def member(self, i: int) -> "_Member":
        return _Member(self, i)

    def _call(self, i: int, x: torch.Tensor, t: int) -> torch.Tensor:
        with self.cond:
            if self.error is not None:
                raise RuntimeError("another image's network call failed") from self.error
            self.pending[i] = (x, t)
            mine = self.round
            if len(self.pending) >= self.live:
                self._run()
            while self.round == mine:
                self.cond.wait()
            if i not in self.results:
                raise RuntimeError("a batched network call failed") from self.error
            return self.results.pop(i)

    def leave(self) -> None:
        """A member is done (or failed): the others no longer wait for it."""
        with self.cond:
            self.live -= 1
            if self.pending and len(self.pending) >= self.live:
                self._run()

    def _run(self) -> None:   # under the lock: every live member is waiting
        reqs, self.pending = self.pending, {}
        try:
            by_t: dict[int, list[int]] = {}
            for i, (_, t) in reqs.items():
                by_t.setdefault(int(t), []).append(i)
            for t, ids in by_t.items():
                xs = torch.cat([reqs[i][0] for i in ids])
                t0 = time.perf_counter()
                out = torch.cat([self.net(xs[k:k + self.batch], t) for k in range(0, len(xs), self.batch)])
                spent, n = time.perf_counter() - t0, len(xs)
                k = 0
                for i in ids:
                    m = len(reqs[i][0])
                    self.results[i] = out[k:k + m]
                    self.spent[i] += spent * m / n
                    k += m
            self.calls += 1
        except BaseException as e:   # every waiter wakes up and raises
            self.error = e
        self.round += 1
        self.cond.notify_all()


class _Member:
    """What a chain sees as its :class:`.chain.Net` (call, :meth:`context`, :attr:`seconds`)."""

    def __init__(self, shared: SharedNet, i: int):
        self.shared, self.i = shared, i
        self.model, self.arithmetic, self.threads = shared.net.model, shared.net.arithmetic, shared.net.threads
        self.context_seconds = 0.0

    def __call__(self, x: torch.Tensor, t: int) -> torch.Tensor:
        return self.shared._call(self.i, x, t)

    @property
    def seconds(self) -> float:
        """This image's share of the batched calls (by tiles) plus its own x_0 context model's time."""
        return self.shared.spent[self.i] + self.context_seconds

    def context(self):
        own = Net(self.model, self.arithmetic, self.threads)   # the x_0 context model: per image, not batched
        coder = own.context()

        def timed(*args):
            before = own.seconds
            out = coder(*args)
            self.context_seconds += own.seconds - before
            return out
        return timed


def run_batched(jobs: Sequence[Callable[[_Member], object]], model: LoadedModel, arith: Arithmetic | bool,
                threads: int | None = None, batch: int = DEFAULT_BATCH) -> list:
    """``job(net)`` for every job, each in its own thread with a member of one :class:`SharedNet`;
    their results in order (the first error is raised after all have stopped)."""
    if not jobs:
        return []
    shared = SharedNet(model, arith, threads, len(jobs), batch)

    def go(i: int):
        try:
            return jobs[i](shared.member(i))
        finally:
            shared.leave()
    with ThreadPoolExecutor(max_workers=len(jobs), thread_name_prefix="ddpm-image") as ex:
        futures = [ex.submit(go, i) for i in range(len(jobs))]
        return [f.result() for f in futures]


def _warm(model: LoadedModel, settings, encoder: bool) -> None:
    """Build what every image's chain shares (the exact network; the encoder's candidate pool) once,
    before the threads start, instead of in each of them at once."""
    if settings.arithmetic.exact:
        model.exact_net()
    if encoder:
        from ..coding.rcc.search import prepare
        prepare(3 * model.image_size ** 2, settings.rcc_config(), str(model.device))


def groups(tiles: Sequence[int], batch: int) -> list[range]:
    """Consecutive items whose tiles add up to at most ``batch`` (an item with more, alone): what is
    coded together, so that memory stays that of ``batch`` tiles (or of one large image)."""
    out, start, total = [], 0, 0
    for i, n in enumerate(tiles):
        if i > start and total + n > batch:
            out.append(range(start, i))
            start, total = i, 0
        total += n
    if len(tiles):
        out.append(range(start, len(tiles)))
    return out


def _num_tiles(height: int, width: int, size: int) -> int:
    return (-(-height // size)) * (-(-width // size))


def lanes_for(lanes: int | None, threads: int | None, items: int) -> int:
    """How many lanes (:func:`_in_groups`): ``lanes``, else one per thread (``threads``, default torch's
    count), never more than the items."""
    if lanes is None:
        lanes = threads if threads is not None else torch.get_num_threads()
    return max(1, min(int(lanes), items))


def _in_groups(jobs: list, tiles: list[int], model, arith, threads, batch, lanes: int = 1) -> list:
    """The jobs in groups of at most ``batch`` tiles (:func:`groups`), each group in lock-step. With
    ``lanes`` > 1 the jobs are cut into that many consecutive parts run side by side, each on one
    thread with ``batch // lanes`` tiles a call: while one lane's network runs, another's images do
    their searches, where one lane alternates between the two and leaves a core idle in each
    (docs/results/scale.md). The same bytes either way."""
    if lanes > 1:
        cuts = [len(jobs) * i // lanes for i in range(lanes + 1)]
        per = max(1, batch // lanes)
        with ThreadPoolExecutor(max_workers=lanes, thread_name_prefix="ddpm-lane") as ex:
            futures = [ex.submit(_in_groups, jobs[a:b], tiles[a:b], model, arith, 1, per)
                       for a, b in zip(cuts, cuts[1:])]
            return [r for f in futures for r in f.result()]
    out: list = []
    for g in groups(tiles, batch):
        out += run_batched(jobs[g.start:g.stop], model, arith, threads, batch)
    return out


def encode_many(images: Sequence, model: LoadedModel, *, settings=None, batch: int = DEFAULT_BATCH,
                threads: int | None = None, lanes: int | None = None, **kw) -> list:
    """:func:`.api.encode` of each image (same keywords), their network calls batched: consecutive
    images of at most ``batch`` tiles in all at a time (a larger image alone), in ``lanes`` parts side
    by side (default: one per thread; :func:`_in_groups`); the results (:class:`.api.EncodeResult`) in
    order, each file byte-identical to a one-image encode."""
    from .api import encode
    from .profiles import default_settings

    settings = settings or default_settings(model)
    _warm(model, settings, encoder=True)
    jobs = [lambda net, img=img: encode(img, model, settings=settings, threads=threads, net=net, **kw)
            for img in images]
    tiles = [_num_tiles(*img.shape[:2], model.image_size) for img in images]
    return _in_groups(jobs, tiles, model, settings.arithmetic, threads, batch, lanes_for(lanes, threads, len(jobs)))


def encode_tries(image, model: LoadedModel, seeds: Sequence[int], *, settings=None, batch: int = DEFAULT_BATCH,
                 threads: int | None = None, lanes: int | None = None, **kw) -> list:
    """:func:`.api.encode` of one image once with each of ``seeds`` (what ``encode(..., effort=E)`` chooses
    among), their network calls batched and run in lanes as :func:`encode_many`'s; each file byte-identical
    to a one-seed encode."""
    from .api import encode
    from .profiles import default_settings

    settings = settings or default_settings(model)
    _warm(model, settings, encoder=True)
    jobs = [lambda net, s=s: encode(image, model, settings=settings, threads=threads, net=net, seed=s, **kw)
            for s in seeds]
    tiles = [_num_tiles(*image.shape[:2], model.image_size)] * len(jobs)
    return _in_groups(jobs, tiles, model, settings.arithmetic, threads, batch, lanes_for(lanes, threads, len(jobs)))


def decode_many(files: Sequence[bytes], model: LoadedModel, *, batch: int = DEFAULT_BATCH,
                threads: int | None = None, lanes: int | None = None, **kw) -> list:
    """:func:`.api.decode` of each file (same keywords), their network calls batched as
    :func:`encode_many`'s (files of one arithmetic; the results in order)."""
    from .api import decode
    from .profiles import read_header

    if not files:
        return []
    settings = read_header(files[0])[1]
    for f in files[1:]:
        if read_header(f)[1].arithmetic != settings.arithmetic:
            raise ValueError("decode_many: the files use different arithmetic; decode them in groups")
    _warm(model, settings, encoder=False)
    jobs = [lambda net, f=f: decode(f, model, threads=threads, net=net, **kw) for f in files]
    heads = [read_header(f)[0].file.header for f in files]
    tiles = [_num_tiles(h.height, h.width, model.image_size) for h in heads]
    return _in_groups(jobs, tiles, model, settings.arithmetic, threads, batch, lanes_for(lanes, threads, len(jobs)))
