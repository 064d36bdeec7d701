"""Past one process (issue 29): the share-out of work over ranks, images batched through the network,
and sharded rd-curve / nll / encode against one-process runs.

Properties, each against something derived independently of the code under test: the rounds'
assignment against its closed form; a batched encode's files against one-image encodes and its
decodes against the input images; the network calls' batch sizes against the lock-step schedule;
the gathered results of 2 gloo ranks against a one-process run."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from ddpm_codec import codec, distributed
from ddpm_codec.codec import batch as batch_mod
from ddpm_codec.models.checkpoint import fresh_model, save_model, with_stats
from ddpm_codec.models.presets import get_preset

FLOAT = codec.settings_with(2, num_steps=8, t_end=2, chunk_bits=6, log2_candidates=8)
EXACT = codec.settings_with(10, num_steps=6, log2_candidates=8, reuse_bits=0)


def made_up_images(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    up = np.kron(rng.normal(size=(n, 4, 4, 3)), np.ones((1, 8, 8, 1)))
    return np.clip(128 + 50 * up + rng.normal(scale=6, size=(n, 32, 32, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return with_stats(fresh_model(get_preset("tiny")), np.concatenate([[0.0], np.geomspace(3e-4, 0.3, 1000)]))


# ----------------------------------------------------------------------------- share-out
def test_share_blocks_cover_the_items_once_in_order():
    for n in (0, 1, 5, 6, 7, 100):
        for world in (1, 2, 3, 8):
            blocks = [list(distributed.share(n, r, world)) for r in range(world)]
            assert sum(blocks, []) == list(range(n))
            assert max(map(len, blocks)) - min(map(len, blocks)) <= 1


def _rounds_worker(rank: int, world: int, init_file: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    seen: list = []
    advanced: list = []
    distributed.map_rounds(7, 2, lambda ids: [(rank, i, i * i) for i in ids], 2, seen.extend, advanced.append)
    if rank == 0:
        with open(out, "w") as f:
            json.dump({"seen": seen, "advanced": advanced}, f)
    dist.destroy_process_group()


def test_map_rounds_on_two_gloo_ranks(tmp_path):
    """Items 2..6 (2 done), 2 per rank a round: round 1 gives 2, 3 to rank 0 and 4, 5 to rank 1;
    the short round 2 (one item) is shared out as ``share(1, r, 2)`` does, which gives item 6 to
    rank 1 (blocks [0, 0) and [0, 1)). Rank 0 receives them in item order."""
    out = tmp_path / "seen.json"
    torch.multiprocessing.spawn(_rounds_worker, args=(2, str(tmp_path / "init"), str(out)), nprocs=2)
    got = json.loads(out.read_text())
    assert [tuple(x) for x in got["seen"]] == [(0, 2, 4), (0, 3, 9), (1, 4, 16), (1, 5, 25), (1, 6, 36)]
    assert got["advanced"] == [4, 1]


# ----------------------------------------------------------------------------- batching
class _CountingNet(batch_mod.Net):
    sizes: list = []

    def __call__(self, x, t):
        _CountingNet.sizes.append(len(x))
        return super().__call__(x, t)


@pytest.mark.parametrize("settings", [EXACT, FLOAT], ids=["exact", "float"])
def test_batched_encode_equals_one_at_a_time_and_decodes(model, settings, monkeypatch):
    images = made_up_images(3, seed=1)
    images[2] = images[2][::-1]   # not three alike
    one = [codec.encode(im, model, settings=settings).data for im in images]
    monkeypatch.setattr(batch_mod, "Net", _CountingNet)
    _CountingNet.sizes = []
    many = codec.encode_many(images, model, settings=settings, batch=2, lanes=1)
    assert [r.data for r in many] == one
    # lock-step: images 0 and 1 together (2 tiles), one call a step; then image 2 alone
    assert _CountingNet.sizes == [2] * settings.num_steps + [1] * settings.num_steps
    _CountingNet.sizes = []
    dec = codec.decode_many(one, model, batch=16, lanes=1)
    assert _CountingNet.sizes == [3] * settings.num_steps
    for d, im in zip(dec, images):
        assert d.lossless and np.array_equal(d.image, im)


def test_lanes_run_side_by_side_with_the_same_bytes(model, monkeypatch):
    """Two lanes, batch 4: 2 tiles a call in each lane; lane 1 takes images 0-1 (one call of 2 a step),
    lane 2 images 2-4 (2, then image 4 alone), the lanes concurrently; the files are those of
    one-image encodes, and decode by two lanes too."""
    images = made_up_images(5, seed=3)
    one = [codec.encode(im, model, settings=EXACT).data for im in images]
    monkeypatch.setattr(batch_mod, "Net", _CountingNet)
    _CountingNet.sizes = []
    many = codec.encode_many(images, model, settings=EXACT, batch=4, lanes=2)
    assert [r.data for r in many] == one
    steps = EXACT.num_steps
    assert sorted(_CountingNet.sizes) == [1] * steps + [2] * (2 * steps)
    dec = codec.decode_many(one, model, lanes=2)
    assert all(d.lossless and np.array_equal(d.image, im) for d, im in zip(dec, images))
    assert batch_mod.lanes_for(None, 2, 1) == 1 and batch_mod.lanes_for(None, 3, 5) == 3 \
        and batch_mod.lanes_for(4, None, 5) == 4


def test_groups_hold_at_most_batch_tiles():
    assert batch_mod.groups([1] * 5, 2) == [range(0, 2), range(2, 4), range(4, 5)]
    assert batch_mod.groups([1, 384, 1, 1], 16) == [range(0, 1), range(1, 2), range(2, 4)]
    assert batch_mod.groups([6, 6, 6], 16) == [range(0, 2), range(2, 3)]
    assert batch_mod.groups([], 16) == []


def test_batched_encode_with_images_stopping_early(model):
    """Images that stop at different steps (lossy): the others go on without them, their files are
    those of one-image encodes."""
    images = made_up_images(3, seed=2)
    times = [codec.encode(images[0], model, settings=EXACT).steps[k].reverse_time for k in (1, 3, 5)]
    one = [codec.encode(im, model, settings=EXACT, max_reverse_time=rt) for im, rt in zip(images, times)]
    assert [len(r.steps) for r in one] == [2, 4, 6]
    jobs = [lambda net, im=im, rt=rt: codec.encode(im, model, settings=EXACT, max_reverse_time=rt, net=net)
            for im, rt in zip(images, times)]
    many = batch_mod.run_batched(jobs, model, EXACT.arithmetic, batch=16)
    assert [r.data for r in many] == [r.data for r in one]


def test_effort_tries_batched_and_inside_encode_many(model, monkeypatch):
    """``effort=2`` on its own runs its two seeds' chains in lock-step (one call of 2 tiles a step, lanes=1
    by one thread) and keeps what the smallest one-seed file is; inside ``encode_many`` (a shared network) the
    tries run one after another with the same result."""
    images = made_up_images(2, seed=4)
    one = [[codec.encode(im, model, settings=EXACT, seed=s).data for s in range(2)] for im in images]
    monkeypatch.setattr(batch_mod, "Net", _CountingNet)
    _CountingNet.sizes = []
    res = codec.encode(images[0], model, settings=EXACT, effort=2, threads=1)
    assert res.data == min(one[0], key=len) and res.seeds_tried == 2
    assert _CountingNet.sizes == [2] * EXACT.num_steps
    many = codec.encode_many(images, model, settings=EXACT, effort=2, batch=2, lanes=1)
    assert [r.data for r in many] == [min(o, key=len) for o in one]


def test_a_failing_image_fails_the_batch_without_hanging(model):
    images = list(made_up_images(2))
    images.insert(1, np.zeros((32, 32, 5), np.uint8))   # refused by encode's input check (5 channels)
    with pytest.raises(codec.api.Error):
        codec.encode_many(images, model, settings=EXACT)


# ----------------------------------------------------------------------------- sharded commands
@pytest.mark.slow
@pytest.mark.subprocess
def test_two_ranks_equal_one_process(model, tmp_path):
    """rd-curve (resuming a store that holds 3 of the 6 images), nll and a folder encode, each run by
    the CLI with --workers 2 (env:// rendezvous, gloo), against one process in this one."""
    from ddpm_codec.eval import rd
    from ddpm_codec.eval.store import ResultStore
    from ddpm_codec.imageio import write_image
    from ddpm_codec.data import to_model_range
    from ddpm_codec.diffusion import respaced_timesteps
    from ddpm_codec.likelihood import nll_bound

    images = made_up_images(6)
    np.savez(tmp_path / "data.npz", test_images=images)
    mpath = save_model(tmp_path / "tiny.safetensors", model.net, model.config)
    sched = ["--profile", "2", "--coding-steps", "8", "--t-end", "2", "--chunk-bits", "6", "--log2-candidates", "8"]
    cli = [sys.executable, "-m", "ddpm_codec.cli.main"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(args):
        p = subprocess.run(cli + args, capture_output=True, text=True, env=env, timeout=300)
        assert p.returncode == 0, p.stdout + p.stderr
        return p.stdout

    # rd-curve: one process here; sharded, resuming after 3 images one process wrote
    one = tmp_path / "one.h5"
    rd.run(images, model, one, settings=FLOAT, dataset="x", progress=False)
    sharded = tmp_path / "sharded.h5"
    rd.run(images[:3], model, sharded, settings=FLOAT, dataset="x", progress=False)
    run(["rd-curve", str(tmp_path / "data.npz"), "-n", "6", "--model", str(mpath), "-o", str(sharded),
         "--no-baselines", "--workers", "2", "--batch", "2", *sched])
    a, b = ResultStore(one), ResultStore(sharded)
    assert a.keys(rd.GROUP) == b.keys(rd.GROUP)
    for k in a.keys(rd.GROUP):
        if k != "seconds":
            np.testing.assert_array_equal(a.read(rd.GROUP, k), b.read(rd.GROUP, k), err_msg=k)
    np.testing.assert_array_equal(b.read(rd.GROUP, "image_index"), np.arange(6))

    # nll: 3 batches of 2 over 2 ranks against one call
    out = run(["nll", str(tmp_path / "data.npz"), "--model", str(mpath), "--steps", "5", "--batch-size", "2",
               "--save", str(tmp_path / "nll.npz"), "--workers", "2"])
    assert "| L_T |" in out and out.count("wrote") == 1   # rank 0 alone reports
    ts = respaced_timesteps(5, model.diffusion.num_timesteps, kind="quadratic", t_end=1)
    ref = nll_bound(model.eval_eps(), model.diffusion, to_model_range(images), timesteps=ts, batch_size=2, seed=0)
    got = np.load(tmp_path / "nll.npz")
    for k in ("prior", "rate", "distortion", "per_step"):
        np.testing.assert_array_equal(got[k], getattr(ref, k), err_msg=k)

    # encode of a folder: rank 0 writes every file, each the bytes of a one-process encode
    (tmp_path / "pics").mkdir()
    for i, im in enumerate(images):
        write_image(tmp_path / "pics" / f"p{i}.png", im)
    run(["encode", str(tmp_path / "pics"), "-o", str(tmp_path / "out"), "--model", str(mpath), "--workers", "2",
         "--batch", "2", *sched])
    for i, im in enumerate(images):
        assert (tmp_path / "out" / f"p{i}.ddpm").read_bytes() == codec.encode(im, model, settings=FLOAT).data


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_failing_worker_stops_the_others_with_one_line_errors(tmp_path):
    """Rank 0 refuses the dataset while rank 1 waits for it in a collective call: the launcher stops
    rank 1 (or rank 1 sees its peer gone and says so in one line), exits 1, no traceback, no store."""
    out = tmp_path / "rd.h5"
    p = subprocess.run([sys.executable, "-m", "ddpm_codec.cli.main", "rd-curve", str(tmp_path / "missing.npz"),
                        "-o", str(out), "--no-baselines", "--workers", "2"],
                       capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert p.returncode == 1
    assert "Error: no dataset at" in p.stderr and "worker(s) failed" in p.stderr
    assert "Traceback" not in p.stderr
    assert not out.exists()
