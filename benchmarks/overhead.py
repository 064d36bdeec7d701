"""Where a per-image file's bits go, and what the compact framing and encoder policies save (issue 28).

    python benchmarks/overhead.py -n 32                       # the default profile and its encoder policy
    python benchmarks/overhead.py -n 32 --profiles 12,13 --out o.json   # paired per image: count models 1 and 2
    python benchmarks/overhead.py -n 32 --snap 0,0,4,0        # snap counts only within +-4 segments
    python benchmarks/overhead.py -n 32 --snap 0.12,0.04,2,0,0.12,0.04,2,1 --out o.json   # paired per image

For each of the first N shared CIFAR-10 test images, each profile (``--profiles``) and each encoder policy
(``--snap up,down,abs,free`` quadruples, :func:`ddpm_codec.coding.rcc.search.snap_chunks`; encoder policy
only, every file decodes with any release; default: the profile's own): the lossless file (format version
2 as written, and the same file rewritten in version 3, ``container.to_compact``) and the lossy ``--steps ROW`` file, split by
``EncodeResult.accounting``: framing field by field, chunk counts, indices, x_0, the coder's rounding
and padding; beside the realised KL of the steps (all, and those above 100 bits). Prints one table per
policy and, with two policies, the paired differences per image (mean and standard error).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import torch

from ddpm_codec import codec
from ddpm_codec.coding import container
from ddpm_codec.coding.rcc import search
from ddpm_codec.models.registry import resolve_model

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LARGE = 100.0   # bits of KL: a "large" step (issue 28)


def with_policy(up: float, down: float, abs_: float, free: float = 0):
    """Runs ``encode`` with another snap window (encoder policy, not format)."""
    orig = search.snap_chunks

    def snap(nchunks, predicted, cfg, dim):
        cfg = dataclasses.replace(cfg, snap_up=up, snap_down=down, snap_abs=abs_, snap_free=int(free))
        return orig(nchunks, predicted, cfg, dim)
    return orig, snap


def measure(img, model, row: int, settings) -> dict:
    res = codec.encode(img, model, seed=0, metrics=False, settings=settings, format_version=2)
    acc = res.accounting
    kl = np.array([r.kl_bits for r in res.steps])
    idx = np.array([s.index_bits for s in acc.steps])
    counts = np.array([s.count_bits for s in acc.steps])
    big = kl > LARGE
    lossy = codec.encode(img, model, seed=0, metrics=False, max_reverse_time=row, settings=settings, format_version=2)
    row_kl = sum(r.kl_bits for r in lossy.steps)
    exact = codec.encode(img, model, seed=0, metrics=False, max_reverse_time=row, settings=settings)   # default: v4
    v3 = container.unpack(container.to_compact(res.data))
    v3_lossy = container.unpack(container.to_compact(lossy.data))
    return dict(
        bytes_v2=len(res.data), bytes_v3=len(res.data) - acc.framing_bits // 8 + v3.framing_bytes(),
        framing_v2=dict(acc.framing), framing_v3=dict(v3.fields), counts=float(counts.sum()),
        index=float(idx.sum()), kl=float(kl.sum()), kl_large=float(kl[big].sum()), index_large=float(idx[big].sum()),
        counts_large=float(counts[big].sum()), x0=float(acc.x0_bits), padding=float(acc.padding_bits),
        lossy_bytes_v2=len(lossy.data),
        lossy_bytes_v3=len(lossy.data) - lossy.accounting.framing_bits // 8 + v3_lossy.framing_bytes(),
        lossy_kl=float(row_kl), lossy_reverse_time=lossy.steps[-1].reverse_time,
        lossy_framing_v2=lossy.accounting.framing_bits // 8, lossy_framing_v3=v3_lossy.framing_bytes(),
        lossy_counts=float(sum(s.count_bits for s in lossy.accounting.steps)),
        lossy_index=float(sum(s.index_bits for s in lossy.accounting.steps)),
        lossy_padding=float(lossy.accounting.padding_bits), seconds=res.seconds,
        # what the lossless encode's report says a file cut at that step costs (rd-curve's cum_bpd; format 2 here)
        lossy_est_bytes=res.steps[len(lossy.steps) - 1].cum_bpd * img.size / 8,
        # the default lossy file: format 4, stopping exactly at reverse time `row`
        lossy_bytes_v4=len(exact.data), lossy_kl_v4=float(sum(r.kl_bits for r in exact.steps)),
        lossy_counts_v4=float(sum(s.count_bits for s in exact.accounting.steps)),
        lossy_framing_v4=exact.accounting.framing_bits // 8, lossy_reverse_time_v4=exact.steps[-1].reverse_time,
    )


def table(rows: list[dict], dims: int) -> list[str]:
    def m(key):
        return float(np.mean([r[key] for r in rows]))

    def bpd(bits):
        return f"{bits / dims:.4f}"
    out = ["| quantity | mean per image | bits/dim |", "|---|---|---|"]
    for label, key, scale in (("file, format 2 (bytes)", "bytes_v2", 8), ("file, format 3 (bytes)", "bytes_v3", 8),
                              ("realised KL of the steps (bits)", "kl", 1), ("index bits", "index", 1),
                              ("count bits", "counts", 1), ("x_0, model code length (bits)", "x0", 1),
                              ("coder overhead and padding (bits)", "padding", 1)):
        out.append(f"| {label} | {m(key):.1f} | {bpd(scale * m(key))} |")
    out.append(f"| (index + counts) / KL, all steps | {(m('index') + m('counts')) / m('kl'):.4f} | |")
    out.append(f"| (index + counts) / KL, steps > {LARGE:g} bits | "
               f"{(m('index_large') + m('counts_large')) / m('kl_large'):.4f} | |")
    lossy_rt = rows[0]["lossy_reverse_time"]
    for v in ("v2", "v3"):
        out.append(f"| lossy to T-t+1 = {lossy_rt}, format {v[1]}: bytes, actual/KL | {m('lossy_bytes_' + v):.1f} | "
                   f"{bpd(8 * m('lossy_bytes_' + v))} (KL {bpd(m('lossy_kl'))}, "
                   f"{8 * m('lossy_bytes_' + v) / m('lossy_kl'):.3f}x) |")
    out.append(f"| lossy: payload/KL (no framing) | {8 * (m('lossy_bytes_v2') - m('lossy_framing_v2')) / m('lossy_kl'):.3f} | |")
    out.append(f"| lossy: count bits, index bits, coder overhead and padding | {m('lossy_counts'):.1f}, "
               f"{m('lossy_index'):.1f}, {m('lossy_padding'):.1f} | |")
    err = [r["lossy_est_bytes"] - r["lossy_bytes_v2"] for r in rows]
    out.append(f"| lossy: the encoder's cum_bpd estimate - the file (bytes; mean, min, max) | "
               f"{np.mean(err):+.2f}, {min(err):+.1f}, {max(err):+.1f} | |")
    out.append(f"| lossy to T-t+1 = {rows[0]['lossy_reverse_time_v4']} exactly, format 4 (the default): bytes, "
               f"actual/KL | {m('lossy_bytes_v4'):.1f} | {bpd(8 * m('lossy_bytes_v4'))} (KL {bpd(m('lossy_kl_v4'))}, "
               f"{8 * m('lossy_bytes_v4') / m('lossy_kl_v4'):.3f}x; framing {m('lossy_framing_v4'):.2f} bytes, "
               f"counts {m('lossy_counts_v4'):.1f} bits) |")
    fields = {}
    for r in rows:
        for v in ("v2", "v3"):
            for k, n in r[f"framing_{v}"].items():
                fields.setdefault(k, {}).setdefault(v, []).append(n)
    out += ["", "| framing field (bytes, mean) | format 2 | format 3 |", "|---|---|---|"]
    for k, d in fields.items():
        out.append(f"| {k} | {np.mean(d.get('v2', [0])) if 'v2' in d else 0:.2f} | "
                   f"{np.mean(d['v3']) if 'v3' in d else 0:.2f} |")
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=32)
    ap.add_argument("--offset", type=int, default=0, help="first image index")
    ap.add_argument("--snap", default="",
                    help="up,down,abs,free quadruples (several: paired comparison; rcc.search.snap_chunks); "
                         "default: each profile's own")
    ap.add_argument("--profiles", default="", help="comma-separated profile ids (default: the default profile)")
    ap.add_argument("--row", type=int, default=900, help="the lossy file's --steps")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--out", default=None, help="JSON of every image's numbers (written after each image)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    vals = [float(v) for v in a.snap.split(",")] if a.snap else []
    model = resolve_model(None)
    profiles = [int(p) for p in a.profiles.split(",")] if a.profiles else [codec.default_profile(model)]
    policies = [(pid,) + tuple(vals[i:i + 4]) for pid in profiles for i in range(0, len(vals), 4)] or \
        [(pid,) for pid in profiles]
    imgs = np.load(Path(a.data) / "cifar10-subset.npz")["test_images"][a.offset:a.offset + a.n]
    results = {p: [] for p in policies}
    orig = search.snap_chunks
    for i, img in enumerate(imgs):
        for p in policies:
            if len(p) > 1:
                _, search.snap_chunks = with_policy(*p[1:])
            try:
                results[p].append(measure(img, model, a.row, codec.PROFILES[p[0]]))
            finally:
                search.snap_chunks = orig
            r = results[p][-1]
            print(f"image {a.offset + i} profile, snap {p}: {r['bytes_v2']} B (v3 {r['bytes_v3']}), x0 {r['x0']:.0f}, "
                  f"(index+counts)/KL {(r['index'] + r['counts']) / r['kl']:.4f}", flush=True)
        if a.out:
            Path(a.out).write_text(json.dumps({",".join(map(str, p)): v for p, v in results.items()}))
    dims = imgs[0].size
    for p in policies:
        pol = f"snap window up {p[1]}, down {p[2]}, abs {p[3]}, free {p[4]:g}" if len(p) > 1 else "its own snap window"
        print(f"\n## profile {p[0]}, {pol}: {len(imgs)} images (from {a.offset})")
        print("\n".join(table(results[p], dims)))
    base = results[policies[0]]
    for p in policies[1:]:
        for key in ("bytes_v2", "bytes_v3", "x0", "index", "counts", "lossy_bytes_v2", "lossy_bytes_v3", "lossy_counts",
                    "lossy_index", "lossy_kl", "lossy_bytes_v4", "lossy_kl_v4"):
            d = np.array([r[key] for r in results[p]]) - np.array([b[key] for b in base])
            scale = 8 if key.startswith(("bytes", "lossy_bytes")) else 1
            print(f"profile, snap {p} - {policies[0]}: {key} {d.mean():+.2f} +- {d.std(ddof=1) / math.sqrt(len(d)):.2f} "
                  f"({scale * d.mean() / dims:+.4f} bits/dim)")


if __name__ == "__main__":
    main()
