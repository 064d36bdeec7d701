"""Do encoder and decoder compute the same network outputs — across processes, on this device?

    python benchmarks/determinism.py                      # CPU, first 2 CIFAR-10 test images
    python benchmarks/determinism.py --device cuda -n 4   # on a GPU

Each image is encoded in one process and decoded in another (fresh interpreters, as a user
would), both with the network wrapped so that every evaluation's input and output is hashed.
Prints, per image, whether the decode was bit-exact and, if not, the first network evaluation
whose input or output differs between the two sides (and by how much): that tells a
non-deterministic kernel (same input, other output) from a divergence elsewhere (other input).
A file that fails must fail with the codec's checksum error, never a wrong image.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _traced_model(spec, device):
    import torch

    from ddpm_codec.models.registry import resolve_model

    model = resolve_model(spec, device=torch.device(device))
    calls: list[dict] = []
    plain = model.eps

    def eps(xt, t):
        out = plain(xt, t)
        calls.append({"t": int(t) if not isinstance(t, torch.Tensor) else int(t.flatten()[0]),
                      "in": hashlib.sha256(xt.float().cpu().numpy().tobytes()).hexdigest()[:16],
                      "out": hashlib.sha256(out.float().cpu().numpy().tobytes()).hexdigest()[:16],
                      "out_values": out.double().cpu().flatten()[:4096].tolist()})
        return out

    model.eps = eps          # the codec's _Net calls model.eps
    return model, calls


def side(role: str, src: str, dst: str, trace: str, spec, device: str) -> None:
    """One process: encode src -> dst, or decode src -> dst; the trace goes to ``trace``."""
    import numpy as np

    from ddpm_codec import codec

    model, calls = _traced_model(spec, device)
    status = "ok"
    if role == "encode":
        img = np.load(src)
        Path(dst).write_bytes(codec.encode(img, model, metrics=False).data)
    else:
        try:
            np.save(dst, codec.decode(Path(src).read_bytes(), model).image)
        except codec.DecodeError as e:
            status = f"DecodeError: {e}"
    Path(trace).write_text(json.dumps({"status": status, "calls": calls}))


def compare(enc: dict, dec: dict) -> str:
    import numpy as np

    for i, (a, b) in enumerate(zip(enc["calls"], dec["calls"])):
        if a["in"] != b["in"]:
            return f"first difference: the INPUT of network call {i} (t={a['t']}): divergence outside the network"
        if a["out"] != b["out"]:
            d = np.max(np.abs(np.array(a["out_values"]) - np.array(b["out_values"])))
            return (f"first difference: the OUTPUT of network call {i} (t={a['t']}) for the same input, "
                    f"max |diff| {d:.3g} (non-deterministic kernel)")
    if len(enc["calls"]) != len(dec["calls"]):
        return f"same outputs for {min(len(enc['calls']), len(dec['calls']))} calls; call counts differ"
    return "all network calls identical"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=2, help="CIFAR-10 test images (the first N)")
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--model", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--side", nargs=5, metavar=("ROLE", "SRC", "DST", "TRACE", "DEVICE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        role, src, dst, trace, device = args.side
        return side(role, src, dst, trace, args.model, device)

    import numpy as np

    from ddpm_codec.data import load_images

    images = load_images(str(Path(args.data) / "cifar10-subset.npz"), "test")[: args.n]
    extra = ["--model", args.model] if args.model else []
    with tempfile.TemporaryDirectory() as tmp:
        for k, img in enumerate(images):
            p = Path(tmp)
            np.save(p / "img.npy", img)
            for role, src, dst in (("encode", p / "img.npy", p / "f.ddpm"), ("decode", p / "f.ddpm", p / "out.npy")):
                subprocess.run([sys.executable, "-P", __file__, *extra, "--side", role, str(src), str(dst),
                                str(p / f"{role}.json"), args.device], check=True)
            enc, dec = (json.loads((p / f"{r}.json").read_text()) for r in ("encode", "decode"))
            exact = dec["status"] == "ok" and np.array_equal(np.load(p / "out.npy"), img)
            print(f"image {k}: {'bit-exact' if exact else dec['status'][:60]}; "
                  f"{len(enc['calls'])} network calls; {compare(enc, dec)}")
            if not exact and dec["status"] == "ok":
                raise SystemExit("a wrong image was returned without an error")


if __name__ == "__main__":
    main()
