"""Writes the golden files of tests/test_golden.py (run once per new profile; never to 'fix' a failure).

    python tests/golden/make_golden.py            # every profile, shipped default model
    python tests/golden/make_golden.py format3    # profile 12 in format version 3 (p12-format3.ddpm)
    python tests/golden/make_golden.py format5    # profile 13 in format version 5, lossless and --steps 900
    python tests/golden/make_golden.py archive    # the archive of the current archive format version

Each profile gets ``p<ID>.ddpm``: the synthetic image of :func:`golden_image` coded losslessly with
the shipped model; ``golden.json`` records the file's sha256 and the sha256 of the pixels it must
decode to. A test failure means a change broke files that exist: the format must stay readable.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def golden_image(h: int = 32, w: int = 32) -> np.ndarray:
    """A synthetic 32x32 RGB test card from integer arithmetic only (no data, no libm): gradients
    with small periodic texture."""
    y, x = np.mgrid[0:h, 0:w].astype(np.int64)
    r = (4 * x + 3 * y + (x * y) % 7) % 256
    g = (128 + 3 * x - 2 * y + ((x + y) % 5) * 3) % 256
    b = (200 - 5 * y + x + (x * x + y) % 11) % 256
    return np.stack([r, g, b], axis=-1).astype(np.uint8)


ARCHIVE_SIZES = [(32, 32), (33, 17), (8, 40)]   # three images: a full tile, odd sizes across tiles


def archive_images() -> list[tuple[str, np.ndarray]]:
    """The golden archive's named images: the test card cut to ``ARCHIVE_SIZES`` (integer arithmetic only)."""
    return [(f"card/{h}x{w}.png", golden_image(h, w)) for h, w in ARCHIVE_SIZES]


def archive_settings():
    """Short chains (the format and exact arithmetic are what a golden archive guards, not the size):
    4 latents, chunks of 2, each chunk's first image a seed file of profile 12 on 6 steps."""
    from dataclasses import replace

    from ddpm_codec.codec import archive as ar
    from ddpm_codec.codec.profiles import PROFILES

    return (ar.ArchiveSettings(num_steps=4, grid_bits=3, chunk_images=2, seed_images=1),
            replace(PROFILES[12], num_steps=6, log2_candidates=8, chunk_bits=2, reuse_bits=0))


def make_archive() -> None:
    """``a<VERSION>.ddpma``: :func:`archive_images` archived with the shipped model by the current writer."""
    from ddpm_codec.codec import archive as ar
    from ddpm_codec.models.registry import resolve_model

    settings, seed_profile = archive_settings()
    data = ar.archive(archive_images(), resolve_model(), settings=settings, seed_profile=seed_profile).data
    path = HERE / "golden.json"
    table = json.loads(path.read_text())
    name = f"a{ar.VERSION}.ddpma"
    (HERE / name).write_bytes(data)
    table[name] = hashlib.sha256(data).hexdigest()
    print(f"{name}: {len(data)} bytes")
    path.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")


def main(profiles=None) -> None:
    from ddpm_codec import codec
    from ddpm_codec.models.registry import resolve_model

    model = resolve_model()
    img = golden_image()
    path = HERE / "golden.json"
    table = json.loads(path.read_text()) if path.exists() else {}
    table["model"] = model.fingerprint[:8]
    table["pixels_sha256"] = hashlib.sha256(img.tobytes()).hexdigest()
    for pid in profiles or sorted(codec.PROFILES):
        data = codec.encode(img, model, settings=codec.PROFILES[pid], metrics=False).data
        (HERE / f"p{pid}.ddpm").write_bytes(data)
        table[f"p{pid}"] = hashlib.sha256(data).hexdigest()
        print(f"profile {pid}: {len(data)} bytes")
    path.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")


def main_format3() -> None:
    """``p12-format3.ddpm``: the default profile's file in format version 3 (compact framing)."""
    from ddpm_codec import codec
    from ddpm_codec.models.registry import resolve_model

    model = resolve_model()
    path = HERE / "golden.json"
    table = json.loads(path.read_text())
    data = codec.encode(golden_image(), model, settings=codec.PROFILES[12], metrics=False, format_version=3).data
    (HERE / "p12-format3.ddpm").write_bytes(data)
    table["p12-format3"] = hashlib.sha256(data).hexdigest()
    print(f"profile 12, format 3: {len(data)} bytes")
    path.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")


def main_format5() -> None:
    """``p13-format5.ddpm`` (lossless) and ``p13-format5-900.ddpm`` (``--steps 900``: a stop at t = 101), the
    default profile's files in format version 5, and the sha256 of the picture the lossy one decodes to."""
    from ddpm_codec import codec
    from ddpm_codec.models.registry import resolve_model

    model = resolve_model()
    path = HERE / "golden.json"
    table = json.loads(path.read_text())
    for name, kw in (("p13-format5", {}), ("p13-format5-900", {"max_reverse_time": 900})):
        data = codec.encode(golden_image(), model, settings=codec.PROFILES[13], metrics=False, format_version=5,
                            **kw).data
        (HERE / f"{name}.ddpm").write_bytes(data)
        table[name] = hashlib.sha256(data).hexdigest()
        if kw:
            table[f"{name}-pixels"] = hashlib.sha256(codec.decode(data, model).image.tobytes()).hexdigest()
        print(f"{name}: {len(data)} bytes")
    path.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    if sys.argv[1:] == ["format3"]:
        main_format3()
    elif sys.argv[1:] == ["format5"]:
        main_format5()
    elif sys.argv[1:] == ["archive"]:
        make_archive()
    else:
        main([int(v) for v in sys.argv[1:]] or None)
