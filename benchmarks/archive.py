"""Bits-back archives (issue 27), measured: bits/dim against the chain's bound, initial bits, time.

    python benchmarks/archive.py -n 100 --steps 48 --decode          # one chunk of test images 0-99
    python benchmarks/archive.py -n 10 --steps 250 --grid-bits 4      # a row of the steps sweep
    python benchmarks/archive.py -n 500 --archive --decode            # `ddpm-codec archive` as it runs (chunks, seed files)
    python benchmarks/archive.py -n 500 --archive --parts DIR --chunks 0,1,2   # some chunks in this process, the
    python benchmarks/archive.py -n 500 --archive --parts DIR --chunks 3,4     # others in another; the last to
                                                                               # finish puts the archive together

Codes test images ``--start`` .. ``--start + n - 1`` of the shared CIFAR-10 subset on ONE stack (one chunk,
as ``ddpm-codec archive`` with ``--chunk >= n``) with the shipped model on one thread, and prints:

* ``bpd``: the archive (index + stack) in bits/dim, for the first 1, 10, ... n images (a set of N
  images makes exactly that stack: the coding is deterministic);
* ``net bpd`` and ``bound bpd``: over images 2..n (the chunk's first image pays the initial bits),
  the stack's growth per image, and the chain's negative ELBO at the realised latents
  (L_T + sum of KL(q(x_s|x_t,x_0) || p(x_s|x_t)) + x_0's code length under the context model);
* initial bits: the first image's virtual words (32 bits each);
* time: archive (and with ``--decode`` extract) seconds as ratios to their network seconds.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ddpm_codec.arithmetic import EXACT  # noqa: E402
from ddpm_codec.codec import archive as ar  # noqa: E402
from ddpm_codec.coding.bitsback import AnsStack  # noqa: E402
from ddpm_codec.models.registry import resolve_model  # noqa: E402

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "cifar10-subset.npz")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, default=10)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--steps", type=int, default=48)
    p.add_argument("--grid-bits", type=int, default=4)
    p.add_argument("--decode", action="store_true", help="also extract and check every image")
    p.add_argument("--data", default=DATA)
    p.add_argument("--json", default=None, help="append the result as one JSON line to this file")
    p.add_argument("--archive", action="store_true",
                   help="instead: ar.archive() as `ddpm-codec archive` runs it (chunks of --chunk, --seed-images "
                        "per-image files at each chunk's bottom), its size against the images' bounds")
    p.add_argument("--chunk", type=int, default=100)
    p.add_argument("--seed-images", type=int, default=3)
    p.add_argument("--save", default=None, help="--archive: also write the archive to this file")
    p.add_argument("--parts", default=None, help="--archive: folder for each chunk's payload and stats")
    p.add_argument("--chunks", default=None, help="--archive: code only these chunks (e.g. 0,1) into --parts")
    p.add_argument("--decode-chunks", default=None, help="--archive --decode: extract only these chunks' images")
    a = p.parse_args()
    torch.set_num_threads(1)
    model = resolve_model()
    imgs = np.load(a.data)["test_images"][a.start:a.start + a.n]
    names = [f"test/{a.start + i:05d}" for i in range(len(imgs))]
    if a.archive:
        return whole_archive(a, model, imgs, names)
    settings = ar.ArchiveSettings(num_steps=a.steps, grid_bits=a.grid_bits, chunk_images=max(len(imgs), 1),
                                  seed_images=0)
    chain = ar.BitsBackChain(model, settings, model.x0_context.config.tau)
    net = ar.Net(model, EXACT)
    ctx = ar._context(model, net)
    stack = AnsStack(seed=0)
    stats, sizes = [], []
    t0 = time.perf_counter()
    for name, img in zip(names, imgs):
        stats.append(ar.encode_image(stack, chain, net, ctx, img, name, measure=True))
        sizes.append(stack.num_bits())
        print(f"{name}: {stats[-1].stack_bits / stats[-1].dims:.4f} bits/dim (bound "
              f"{(stats[-1].kl_bits + stats[-1].x0_bits) / stats[-1].dims:.4f})", flush=True)
    enc_s, enc_net = time.perf_counter() - t0, net.seconds
    dims = stats[0].dims
    entries = [ar.ImageEntry(n, 32, 32, ar.image_check(im)) for n, im in zip(names, imgs)]
    by_size = {}
    for k in sorted({1, 10, 100, 500, len(imgs)}):
        if k <= len(imgs):
            index = ar._pack_index(b"\0" * 4, settings, chain.tau, entries[:k],
                                   [ar.PackedChunk([], b"\0" * (sizes[k - 1] // 8), 0)])
            by_size[k] = (8 * len(index) + sizes[k - 1]) / (k * dims)
    rest = stats[1:] or stats
    out = {
        "steps": a.steps, "grid_bits": a.grid_bits, "n": len(imgs), "start": a.start,
        "bpd_by_set_size": by_size,
        "bound_bpd_all": sum(s.kl_bits + s.x0_bits for s in stats) / (len(stats) * dims),
        "net_bpd": sum(s.stack_bits for s in rest) / (len(rest) * dims),
        "ideal_bpd": sum(s.push_bits - s.pop_bits for s in rest) / (len(rest) * dims),
        "bound_bpd": sum(s.kl_bits + s.x0_bits for s in rest) / (len(rest) * dims),
        "kl_bpd": sum(s.kl_bits for s in rest) / (len(rest) * dims),
        "x0_bpd": sum(s.x0_bits for s in rest) / (len(rest) * dims),
        "initial_bits": stats[0].virtual_bits,
        "encode_seconds": enc_s, "encode_network_seconds": enc_net,
    }
    out["net_over_bound"] = out["net_bpd"] / out["bound_bpd"]
    out["encode_ratio"] = enc_s / enc_net
    if a.decode:
        data = ar._pack_index(bytes.fromhex(model.context_fingerprint[:8]), settings, chain.tau, entries,
                              [ar.PackedChunk([], stack.to_bytes(), ar.pixels_crc(imgs))]) + stack.to_bytes()
        res = ar.extract(data, model)
        assert not res.damaged and all(np.array_equal(g, w) for (_, g), w in zip(res.images, imgs))
        out["decode_seconds"], out["decode_network_seconds"] = res.seconds, res.network_seconds
        out["decode_ratio"] = res.seconds / res.network_seconds
    print(json.dumps(out))
    if a.json:
        with open(a.json, "a") as f:
            f.write(json.dumps(out) + "\n")


def whole_archive(a, model, imgs, names) -> None:
    """`ddpm-codec archive` as it runs, chunk by chunk: each chunk's payload and stats go to --parts (so
    chunks can run in separate processes: --chunks); once every chunk is there, the archive is put
    together, measured, and with --decode extracted (all, or --decode-chunks) and compared."""
    settings = ar.ArchiveSettings(num_steps=a.steps, grid_bits=a.grid_bits, chunk_images=a.chunk,
                                  seed_images=a.seed_images)
    coder = ar.ChunkCoder(model, settings)
    k, items = a.chunk, list(zip(names, imgs))
    num_chunks = -(-len(items) // k)
    parts = a.parts or tempfile.mkdtemp(prefix="archive-parts-")
    os.makedirs(parts, exist_ok=True)
    for c in (range(num_chunks) if a.chunks is None else [int(v) for v in a.chunks.split(",") if v]):
        t0, n0 = time.perf_counter(), coder.net.seconds
        chunk, stats = coder.encode(c, items[c * k:(c + 1) * k], measure=True)
        with open(os.path.join(parts, f"chunk{c}.bin"), "wb") as f:
            f.write(chunk.payload)
        with open(os.path.join(parts, f"chunk{c}.json"), "w") as f:
            json.dump({"seed_files": chunk.seed_files, "pixels_crc": chunk.pixels_crc,
                       "stats": [dataclasses.asdict(s) for s in stats], "seconds": time.perf_counter() - t0,
                       "network_seconds": coder.net.seconds - n0}, f)
        print(f"chunk {c}: {len(chunk.payload)} bytes", flush=True)
    if not all(os.path.exists(os.path.join(parts, f"chunk{c}.json")) for c in range(num_chunks)):
        return print(f"parts in {parts}; run the other chunks (--chunks) to put the archive together")
    chunks, stats, seconds, network = [], [], 0.0, 0.0
    for c in range(num_chunks):
        meta = json.load(open(os.path.join(parts, f"chunk{c}.json")))
        payload = open(os.path.join(parts, f"chunk{c}.bin"), "rb").read()
        chunks.append(ar.PackedChunk(meta["seed_files"], payload, meta["pixels_crc"]))
        stats += [ar.ImageStats(**s) for s in meta["stats"]]
        seconds, network = seconds + meta["seconds"], network + meta["network_seconds"]
    entries = [ar.ImageEntry(n, *im.shape[:2], ar.image_check(im)) for n, im in items]
    index = coder.index(entries, chunks)
    res = ar.ArchiveResult(index + b"".join(ch.payload for ch in chunks), stats, seconds, network, len(index))
    if a.save:
        with open(a.save, "wb") as f:
            f.write(res.data)
    seeds = [s for i, s in enumerate(res.stats) if i % a.chunk < a.seed_images]
    rest = [s for i, s in enumerate(res.stats) if i % a.chunk >= a.seed_images]
    dims = res.num_dims
    out = {"mode": "archive", "steps": a.steps, "grid_bits": a.grid_bits, "n": len(imgs), "start": a.start,
           "chunk": a.chunk, "seed_images": a.seed_images, "bytes": len(res.data), "bpd": res.bits_per_dim,
           "index_bytes": res.index_bytes,
           "bound_bpd": sum(s.kl_bits + s.x0_bits for s in res.stats) / dims,
           "seed_file_bpd": sum(s.stack_bits for s in seeds) / max(sum(s.dims for s in seeds), 1),
           "seed_bound_bpd": sum(s.kl_bits + s.x0_bits for s in seeds) / max(sum(s.dims for s in seeds), 1),
           "virtual_bits": sum(s.virtual_bits for s in res.stats),
           "bitsback_bpd": sum(s.stack_bits for s in rest) / max(sum(s.dims for s in rest), 1),
           "bitsback_bound_bpd": sum(s.kl_bits + s.x0_bits for s in rest) / max(sum(s.dims for s in rest), 1),
           "seconds": res.seconds, "network_seconds": res.network_seconds}
    out["over_bound"] = out["bpd"] / out["bound_bpd"]
    # overhead per image: the archive against bits-back at the bound for every image (seed images at
    # their own chain's bound: the same chain, RCC-coded)
    out["overhead_bits_per_image"] = (8 * len(res.data) - sum(s.kl_bits + s.x0_bits for s in res.stats)) / len(imgs)
    out["overhead_bpd"] = out["overhead_bits_per_image"] * len(imgs) / dims
    idx = ar.read_index(res.data)
    out["chunk_bytes"] = [c.length for c in idx.chunks]
    out["seed_file_bytes"] = [c.seed_files for c in idx.chunks]
    out["virtual_bits_by_chunk"] = [sum(s.virtual_bits for s in res.stats[c * k:(c + 1) * k])
                                    for c in range(num_chunks)]
    if a.decode:
        only = None
        if a.decode_chunks is not None:
            only = [n for c in a.decode_chunks.split(",") for n in names[int(c) * k:(int(c) + 1) * k]]
        ex = ar.extract(res.data, model, only=only)
        want = dict(items)
        assert not ex.damaged and len(ex.images) == len(only or names)
        assert all(np.array_equal(g, want[n]) for n, g in ex.images)
        out["decoded_images"] = len(ex.images)
        out["decode_seconds"], out["decode_network_seconds"] = ex.seconds, ex.network_seconds
        out["decode_ratio"] = ex.seconds / ex.network_seconds
    out["encode_ratio"] = res.seconds / res.network_seconds
    print(json.dumps(out))
    if a.json:
        with open(a.json, "a") as f:
            f.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
