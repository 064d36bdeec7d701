"""Byte identity across a refactor: hashes of files, decodes, reconstructions and KL traces.

    python benchmarks/byte_identity.py OUT_DIR            # writes OUT_DIR/ref.json (+ the .ddpm files)
    python benchmarks/byte_identity.py OUT_DIR t0-p9,k-p3  # only these cases

Run it before and after a change (e.g. from a git worktree of the old commit) and compare the two
ref.json files; every field but the timings must be equal. Uses CIFAR-10 test images 0-1 and a
40x50 crop of Kodak kodim03 from ../shared/data (not stored here).
"""
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import ddpm_codec as dc
from ddpm_codec import codec

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

out = sys.argv[1]
model = dc.load_model()
d = np.load(str(DATA / "cifar10-subset.npz"))
imgs = {"t0": d["test_images"][0], "t1": d["test_images"][1]}
from PIL import Image
k = np.asarray(Image.open(str(DATA / "kodak" / "kodim03.png")).convert("RGB"))
imgs["k40x50"] = np.ascontiguousarray(k[100:140, 200:250])
jobs = []
for p in sorted(codec.PROFILES):
    if p == 4:   # 1.6 GB of pool tables: check it on its own when it matters
        continue
    jobs.append((f"t0-p{p}", "t0", dict(settings=codec.PROFILES[p])))
jobs += [("t1-p9", "t1", dict()), ("k-p9", "k40x50", dict()), ("k-p3", "k40x50", dict(settings=codec.PROFILES[3])),
         ("t0-p9-lossy800", "t0", dict(max_reverse_time=800)),
         ("t0-p9-bpd0.5", "t0", dict(max_bpd=0.5)),
         ("t0-explicit", "t0", dict(settings=codec.settings_with(9, rate_percent=102))),
         ("t0-v1-p6", "t0", dict(settings=codec.PROFILES[6], x0_in_stream=False)),
         ("t1-p9-seed7", "t1", dict(seed=7)),
         ("t0-p9-fixedsmall", "t0", dict(settings=codec.settings_with(9, variance="fixedsmall")))]
if len(sys.argv) > 2:
    jobs = [j for j in jobs if j[0] in sys.argv[2].split(",")]
res = {}
for name, img, kw in jobs:
    t0 = time.time()
    r = codec.encode(imgs[img], model, **kw)
    e = {"sha": hashlib.sha256(r.data).hexdigest(), "len": len(r.data),
         "steps": [(s.reverse_time, s.kl_bits, s.actual_bits, s.cum_bpd, s.rmse, s.chunks) for s in r.steps],
         "x0_bits": r.x0_bits, "x0_ideal": r.x0_ideal_bits, "enc_s": time.time() - t0, "net_s": r.network_seconds}
    open(f"{out}/{name}.ddpm", "wb").write(r.data)
    t1 = time.time()
    dr = codec.decode(r.data, model)
    e["dec"] = hashlib.sha256(dr.image.tobytes()).hexdigest(); e["dec_s"] = time.time() - t1
    if name in ("t0-p9", "t0-p9-lossy800"):
        for mode in ("denoise", "flow", "ancestral"):
            dr = codec.decode(r.data, model, steps=300, reconstruct=mode, reconstruct_steps=10)
            e[f"dec300-{mode}"] = hashlib.sha256(dr.image.tobytes()).hexdigest()
        dr = codec.decode(r.data, model, progressive=True, steps=400)
        e["prog"] = [hashlib.sha256(im.tobytes()).hexdigest() for _, im in dr.progressive]
    if name == "t0-p9":
        tr = codec.trace_theoretical(imgs[img], model)
        e["trace"] = [(s.kl_bits, s.rmse) for s in tr.steps] + [tr.x0_ideal_bits]
    res[name] = e
    print(name, e["len"], e["sha"][:12], f"{e['enc_s']:.1f}s", flush=True)
json.dump(res, open(f"{out}/ref.json", "w"), indent=1)
