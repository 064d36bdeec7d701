"""Rate-distortion study (the paper's Fig. 5 / Table 4) with the bits the codec actually writes.

Per image: one progressive lossless encode, recording at every coding step the reverse time,
cumulative actual bits and KL bound (bits/dim), RMSE/PSNR of x_hat_0 (optionally of ancestral
and flow reconstructions at the table's rows), and the lossless total with two reference code
lengths: the model bound (the realised chain's KLs + x_0 under the model's own decoder) and the
adapted code length (x_0 under the decoder the per-tile side information fits to the image, plus
the side information's bits; not a bound). Results go to HDF5 (resumable, one row per image),
then aggregate into a markdown table and plots, beside classical codecs on the same images.

Distortion over images: RMSE = sqrt(mean MSE) and PSNR = 10 log10(255^2 / mean MSE), the same mean
(not the mean of per-image PSNRs), for DDPM and the classical codecs alike.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ResultsError

# Ho et al. (2020), Table 4: reverse time, rate (bits/dim), distortion (RMSE, 0-255).
PAPER_TABLE4 = np.array([
    [1000, 1.77581, 0.95136], [900, 0.11994, 12.02277], [800, 0.05415, 18.47482], [700, 0.02866, 24.43656],
    [600, 0.01507, 30.80948], [500, 0.00716, 38.03236], [400, 0.00282, 46.12765], [300, 0.00081, 54.18826],
    [200, 0.00013, 60.97170], [100, 0.00000, 67.60125]])
TABLE_ROWS = tuple(range(100, 1001, 100))
GROUP = "ddpm"
PER_STEP = ("cum_bpd", "cum_kl_bpd", "rmse", "psnr", "actual_bits", "kl_bits")
# stores written before the two reference code lengths were split hold one per-image value here:
# the realised chain's KLs + -log2 p(x_0 | x_tau) under the decoder as adapted by the side information,
# without the side information's own bits (= the model bound where the settings have no x_0 side information)
LEGACY_BOUND = "lossless_bound_bpd"


def _psnr(rmse):
    rmse = np.asarray(rmse, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.where(rmse > 0, 20 * np.log10(255.0 / np.maximum(rmse, 1e-300)), np.inf)


def row_index(reverse_times: np.ndarray, row: int) -> int | None:
    """The last coding step with reverse time <= ``row`` (what ``decode --steps row`` uses)."""
    ok = np.nonzero(np.asarray(reverse_times) <= row)[0]
    return int(ok[-1]) if len(ok) else None


def run(images: np.ndarray, model, store_path: str | Path, *, settings=None, theoretical: bool = False,
        reconstruct: tuple[str, ...] = (), indices: np.ndarray | None = None, dataset: str = "",
        progress: bool = True, seed: int = 0, batch: int = 1, format_version: int | None = None,
        effort: int = 1) -> int:
    """Encode each image (resuming after the rows already in ``store_path``); returns rows done.

    Under torchrun (:mod:`ddpm_codec.distributed`) every rank runs this with the same arguments: the
    images are shared out in rounds, and rank 0 alone opens the store and appends every round's rows
    in image order, so the store holds what a one-process run writes (the ``seconds`` column aside)
    and resumes the same way. ``batch > 1``: each rank codes its images ``batch`` at a time, their
    network calls batched (:func:`ddpm_codec.codec.encode_many`; the same files). ``format_version``: the
    files' format, whose framing the rates count (default the codec's: a lossy cut in format 4). ``effort=E``:
    each image's lossless file is the smallest of E seeds' (``encode(..., effort=E)``), and its rows are that
    file's cuts; the store's ``effort`` attribute says so."""
    from tqdm.auto import tqdm

    from .. import codec, distributed

    settings = settings or codec.default_settings(model)
    fmt = format_version or 0   # 0: the codec's default formats
    indices = np.arange(len(images)) if indices is None else np.asarray(indices)
    mode = "theoretical" if theoretical else "actual"
    if theoretical and effort != 1:
        raise ResultsError("effort chooses among real files: it does nothing in the theoretical (KL-only) mode")
    rank, _ = distributed.rank_world()
    done, error = None, None
    if rank == 0:
        try:
            done = _open_store(store_path, model, settings, mode, indices, dataset, reconstruct, seed, fmt, effort)
        except ResultsError as e:
            error = str(e)
    done, error = distributed.broadcast((done, error))
    if error:
        raise ResultsError(error)
    store = None
    if rank == 0:
        from .store import ResultStore
        store = ResultStore(store_path)
    bar = tqdm(total=len(images), initial=done, disable=not progress or rank != 0, unit="img",
               desc=f"rd-curve ({mode})")

    def work(ids):
        if theoretical:
            results = [codec.trace_theoretical(images[i], model, settings=settings, seed=seed + i) for i in ids]
        elif batch > 1 and len(ids) > 1:
            results = codec.encode_many([images[i] for i in ids], model, settings=settings, seed=seed, batch=batch,
                                        format_version=format_version, effort=effort)
        else:
            results = [codec.encode(images[i], model, settings=settings, seed=seed, format_version=format_version,
                                    effort=effort) for i in ids]
        return [_record(images[i], int(indices[i]), res, model, settings, reconstruct, seed, theoretical)
                for i, res in zip(ids, results)]

    def write(records):
        for rec in records:
            _append(store, rec, settings)

    distributed.map_rounds(len(images), done, work, max(batch, distributed.ROUND_ITEMS), write, bar.update)
    bar.close()
    return len(images)


def _open_store(store_path, model, settings, mode, indices, dataset, reconstruct, seed, fmt=0, effort=1) -> int:
    """Check (or start) the store for this run; the number of complete rows it holds (a record a crash
    left half-written is cut off)."""
    import torch

    from .store import ResultStore

    store = ResultStore(store_path)
    if store.has(GROUP, LEGACY_BOUND):
        raise ResultsError(f"{store_path} was written by an older version ({LEGACY_BOUND}): use a new -o file")
    attrs = store.get_attrs(GROUP)
    if attrs:
        if attrs.get("fingerprint") != model.fingerprint or attrs.get("mode") != mode \
                or attrs.get("settings") != repr(settings) or int(attrs.get("format_version", 2)) != fmt:
            raise ResultsError(f"{store_path} holds results of another model/mode/settings: use a new -o file")
        held = int(attrs.get("effort", 1))
        if held != effort:
            raise ResultsError(f"{store_path} holds results of effort {held}, not {effort}: use a new -o file")
    else:
        import constriction
        import PIL

        store.set_attrs(GROUP, fingerprint=model.fingerprint, model=model.name, mode=mode, settings=repr(settings),
                        dataset=dataset, torch=torch.__version__, constriction=getattr(constriction, "__version__", "?"),
                        pillow=PIL.__version__, reconstruct=",".join(reconstruct), seed=seed, format_version=fmt,
                        effort=effort)
    # image_index is appended last: rows beyond it belong to a record a crash left half-written
    done = store.num_rows(GROUP, "image_index")
    for key in store.keys(GROUP):
        if key not in ("reverse_time", "t") and store.num_rows(GROUP, key) > done:
            store.truncate_rows(GROUP, key, done)
    if done and not np.array_equal(store.read(GROUP, "image_index"), indices[:done]):
        raise ResultsError(f"{store_path} holds other images (image_index differs): use a new -o file")
    return done


def _record(img, index, res, model, settings, reconstruct, seed, theoretical) -> dict:
    """One image's row of the store (what a rank sends to rank 0): per-step arrays and per-image values."""
    steps = res.steps
    rt = np.array([r.reverse_time for r in steps], dtype=np.int32)
    rec = {"reverse_time": rt, "t": np.array([r.t for r in steps], dtype=np.int32), "image_index": index,
           "per_step": {k: np.array([[getattr(r, k) for r in steps]], dtype=np.float64) for k in PER_STEP},
           "modes": {m: _reconstruction_rmse(img, model, settings, res, m, rt, seed)[None] for m in reconstruct},
           "lossless_bpd": res.bits_per_dim if not theoretical else np.nan,
           "model_bound": res.model_bound_bpd, "adapted": res.adapted_code_length_bpd, "seconds": res.seconds}
    return rec


def _append(store, rec: dict, settings) -> None:
    """Append one image's row (``image_index`` last: it marks the record complete)."""
    if not store.has(GROUP, "reverse_time"):
        store.write_array(GROUP, "reverse_time", rec["reverse_time"])
        store.write_array(GROUP, "t", rec["t"])
    for k, v in rec["per_step"].items():
        store.append_rows(GROUP, k, v)
    for m, v in rec["modes"].items():
        store.append_rows(GROUP, f"rmse_{m}", v)
    store.append_rows(GROUP, "lossless_bpd", np.array([rec["lossless_bpd"]]))
    store.append_rows(GROUP, "lossless_model_bound_bpd", np.array([rec["model_bound"]]))
    key = "lossless_context_bpd" if settings.x0_context else "lossless_adapted_bpd"
    store.append_rows(GROUP, key, np.array([rec["adapted"]]))
    store.append_rows(GROUP, "seconds", np.array([rec["seconds"]]))
    store.append_rows(GROUP, "image_index", np.array([rec["image_index"]], dtype=np.int64))


def _reconstruction_rmse(img, model, settings, res, mode, rt, seed) -> np.ndarray:
    """RMSE of ``mode`` reconstructions decoded from the file at each table row (NaN elsewhere)."""
    from .. import codec

    out = np.full(len(TABLE_ROWS), np.nan)
    if not res.data:
        return out
    for j, row in enumerate(TABLE_ROWS):
        k = row_index(rt, row)
        if k is None:
            continue
        dec = codec.decode(res.data, model, steps=row, reconstruct=mode, seed=seed)
        out[j] = math.sqrt(float(np.mean((dec.image.astype(np.float64) - img.astype(np.float64)) ** 2)))
    return out


@dataclass
class Aggregate:
    reverse_time: np.ndarray     # [S]
    kl_bpd: np.ndarray           # [S] mean cumulative KL bound
    actual_bpd: np.ndarray       # [S] mean cumulative actual rate
    rmse: np.ndarray             # [S] RMSE of the mean MSE: sqrt(mean over images of the MSE)
    psnr: np.ndarray             # [S] PSNR of the mean MSE: 10 log10(255^2 / mean MSE), NOT the mean per-image PSNR
    lossless_bpd: float
    num_images: int
    rmse_by_mode: dict[str, np.ndarray]   # mode -> [len(TABLE_ROWS)], RMSE of the mean MSE
    # means per image; NaN where the store does not hold the quantity
    lossless_model_bound_bpd: float = math.nan    # realised chain's KLs + x_0 under the model's own decoder
    lossless_adapted_bpd: float = math.nan        # KLs + x_0 under the adapted decoder + side bits (not a bound)
    lossless_adapted_no_side_bpd: float = math.nan  # older stores: KLs + adapted x_0, side bits left out
    lossless_context_bpd: float = math.nan        # KLs + x_0 under the learned context model (no side information)

    def lossless_references(self) -> list[tuple[str, str, float]]:
        """(short label, what it is, bits/dim) of each reference code length this aggregate holds."""
        return [(label, what, getattr(self, key)) for key, (label, what) in LOSSLESS_REFERENCES.items()
                if np.isfinite(getattr(self, key))]


# Aggregate field -> (short label, what it is), in the order the report prefers them
LOSSLESS_REFERENCES = {
    "lossless_model_bound_bpd": (
        "model bound",
        "the realised chain's KLs + -log2 p(x_0|x_tau) under the model's own decoder (no side information)"),
    "lossless_adapted_bpd": (
        "adapted code length",
        ("the realised chain's KLs + -log2 p(x_0|x_tau) under the decoder adapted to the image by the per-tile "
         "side information + the side information's bits; not a bound (the adaptation is fitted to the image)")),
    "lossless_context_bpd": (
        "context-model code length",
        ("the realised chain's KLs + -log2 p(x_0|x_tau) under the learned x_0 context model (no side "
         "information: a code length of the model itself)")),
    "lossless_adapted_no_side_bpd": (
        "adapted, side bits left out",
        ("the realised chain's KLs + -log2 p(x_0|x_tau) under the decoder adapted by the per-tile side "
         "information, without the side information's own bits (what an older store kept); not a bound")),
}


def _has_x0_side_information(settings_repr: str) -> bool:
    """Whether a store's ``settings`` attribute (a CodecSettings repr) sends per-tile x_0 side information."""
    return any(int(v) for v in re.findall(r"x0_(?:scale|channel)_bits=(\d+)", settings_repr or ""))


def aggregate(store_path: str | Path) -> Aggregate:
    from .store import ResultStore

    st = ResultStore(store_path)
    if not st.has(GROUP, "image_index"):
        raise ResultsError(f"{store_path} holds no rd-curve results")
    rmse = st.read(GROUP, "rmse")
    modes = {}
    for k in st.keys(GROUP):
        if k.startswith("rmse_"):
            modes[k[5:]] = np.sqrt(np.nanmean(st.read(GROUP, k) ** 2, axis=0))

    def mean(key):
        return float(np.mean(st.read(GROUP, key))) if st.has(GROUP, key) else math.nan

    refs = dict(lossless_model_bound_bpd=mean("lossless_model_bound_bpd"),
                lossless_adapted_bpd=mean("lossless_adapted_bpd"), lossless_context_bpd=mean("lossless_context_bpd"))
    if st.has(GROUP, LEGACY_BOUND):
        attrs = st.get_attrs(GROUP)
        if attrs.get("mode") == "theoretical" or not _has_x0_side_information(str(attrs.get("settings", ""))):
            refs["lossless_model_bound_bpd"] = mean(LEGACY_BOUND)   # no side information: the model's decoder
        else:
            refs["lossless_adapted_no_side_bpd"] = mean(LEGACY_BOUND)
    mse = (rmse ** 2).mean(0)
    return Aggregate(reverse_time=st.read(GROUP, "reverse_time"), kl_bpd=st.read(GROUP, "cum_kl_bpd").mean(0),
                     actual_bpd=st.read(GROUP, "cum_bpd").mean(0), rmse=np.sqrt(mse), psnr=_psnr(np.sqrt(mse)),
                     lossless_bpd=float(np.mean(st.read(GROUP, "lossless_bpd"))),
                     num_images=int(st.num_rows(GROUP, "image_index")), rmse_by_mode=modes, **refs)


def markdown_table(agg: Aggregate) -> str:
    """The paper's Table 4 with real bits: rows at reverse time 100..1000 and lossless, then notes
    saying what the distortion columns and the lossless row's KL column are."""
    modes = list(agg.rmse_by_mode)
    head = "| T-t+1 | KL rate (bits/dim) | actual rate (bits/dim) | actual/KL | RMSE (of mean MSE) | " \
        "PSNR of mean MSE (dB) |" + "".join(f" RMSE {m} |" for m in modes) + " paper rate | paper RMSE |"
    lines = [head, "|" + "---|" * (8 + len(modes))]
    for j, row in enumerate(TABLE_ROWS):
        k = row_index(agg.reverse_time, row)
        paper = PAPER_TABLE4[PAPER_TABLE4[:, 0] == row][0]
        if k is None:
            lines.append(f"| {row} | 0 | 0 | – | – | – |" + " – |" * len(modes) + f" {paper[1]:.5f} | {paper[2]:.2f} |")
            continue
        ratio = agg.actual_bpd[k] / agg.kl_bpd[k] if agg.kl_bpd[k] > 0 else float("nan")
        extra = "".join(f" {agg.rmse_by_mode[m][j]:.2f} |" for m in modes)
        lines.append(f"| {row} | {agg.kl_bpd[k]:.5f} | {agg.actual_bpd[k]:.5f} | {ratio:.3f} | {agg.rmse[k]:.2f} | "
                     f"{agg.psnr[k]:.2f} |{extra} {paper[1]:.5f} | {paper[2]:.2f} |")
    refs = agg.lossless_references()
    ref = refs[0] if refs else ("", "not stored", math.nan)
    ratio = f"{agg.lossless_bpd / ref[2]:.3f}" if np.isfinite(ref[2]) else "–"
    value = f"{ref[2]:.4f}" if np.isfinite(ref[2]) else "–"
    lines.append(f"| lossless | {value} | {agg.lossless_bpd:.4f} | {ratio} | 0 | inf |" + " – |" * len(modes)
                 + " 3.75 | 0 |")
    lines += ["", ("RMSE = sqrt(mean over images of each image's MSE); PSNR = 10 log10(255^2 / that mean MSE) "
                   "(not the mean of per-image PSNRs)."),
              f"Lossless row, KL rate column: {ref[0] + ': ' if ref[0] else ''}{ref[1]}."]
    return "\n".join(lines)


BASE_GROUP = "baselines"


def run_baselines(images: np.ndarray, store_path: str | Path, progress: bool = True) -> None:
    """Classical codecs on the same images (skipped when already stored)."""
    from . import baselines
    from .store import ResultStore

    st = ResultStore(store_path)
    if st.has(BASE_GROUP):
        return
    sizes = baselines.lossless_sizes(images, progress=progress)
    for name, arr in sizes.items():
        st.write_array(f"{BASE_GROUP}/lossless", name, np.asarray(arr))
    for name, res in baselines.lossy_sweep(images, progress=progress).items():
        g = f"{BASE_GROUP}/lossy/{name}"
        st.write_array(g, "bytes", res.bytes)
        st.write_array(g, "rmse", res.rmse)
        st.write_array(g, "psnr", res.psnr)
        st.write_array(g, "quality", np.asarray(res.quality, dtype=np.float64))
    st.set_attrs(BASE_GROUP, num_images=len(images))


def baseline_summary(store_path: str | Path) -> tuple[dict[str, float], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """(lossless bits/dim per codec, lossy (mean bits/dim, PSNR of mean MSE) curves per codec)."""
    from .store import ResultStore

    st = ResultStore(store_path)
    if not st.has(BASE_GROUP):
        return {}, {}
    lossless = {}
    for name in st.keys(f"{BASE_GROUP}/lossless"):
        b = st.read(f"{BASE_GROUP}/lossless", name)
        lossless[name] = b
    lossy = {}
    for name in st.keys(f"{BASE_GROUP}/lossy"):
        g = f"{BASE_GROUP}/lossy/{name}"
        by, rm = st.read(g, "bytes"), st.read(g, "rmse")
        lossy[name] = (by, rm)
    return lossless, lossy


def write_report(store_path: str | Path, plot_path: str | Path | None, image_shape=(32, 32, 3)) -> str:
    """Markdown: the Table-4 table, baselines, and DDPM vs WebP/AVIF at equal PSNR; draws the plots."""
    from . import baselines as bl
    from .store import ResultStore

    agg = aggregate(store_path)
    dims = int(np.prod(image_shape))
    effort = int(ResultStore(store_path).get_attrs(GROUP).get("effort", 1))
    out = [f"{agg.num_images} images" + (f", each file the smallest of {effort} seeds' (--effort {effort})"
                                         if effort > 1 else ""), "", markdown_table(agg), ""]
    lossless, lossy = baseline_summary(store_path)
    if lossless:
        out.append("| lossless codec | bits/dim |\n|---|---|")
        out.append(f"| ddpm-codec (actual file) | {agg.lossless_bpd:.4f} |")
        for label, _, v in agg.lossless_references():
            out.append(f"| ddpm-codec ({label}) | {v:.4f} |")
        for name, b in sorted(lossless.items(), key=lambda kv: kv[1].mean()):
            out.append(f"| {name} | {8 * b.mean() / dims:.4f} |")
        out.append("")
    ddpm_rate, ddpm_psnr = agg.actual_bpd, _psnr(agg.rmse)
    keep = np.isfinite(ddpm_psnr) & (ddpm_rate > 0)
    if lossy:
        out.append("| codec | bits ratio codec/DDPM at equal PSNR (overlap) | PSNR range |\n|---|---|---|")
        for name, (by, rm) in lossy.items():
            rate = 8 * by.mean(0) / dims
            ps = _psnr(np.sqrt((rm ** 2).mean(0)))
            try:
                ratio = bl.rate_ratio_at_equal_psnr(rate, ps, ddpm_rate[keep], ddpm_psnr[keep])
                lo, hi = max(ps.min(), ddpm_psnr[keep].min()), min(ps.max(), ddpm_psnr[keep].max())
                out.append(f"| {name} | {ratio:.3f} | {lo:.1f}–{hi:.1f} dB |")
            except ValueError as e:
                out.append(f"| {name} | no overlap ({e}) | |")
        out.append("")
        out.append(psnr_table(ddpm_rate[keep], ddpm_psnr[keep], lossy, dims))
        out.append("")
    if plot_path:
        draw(store_path, plot_path, image_shape)
        out.append(f"plots: {plot_path} (+ -time.png)")
    return "\n".join(out)


PSNR_LEVELS = (15.0, 20.0, 25.0, 30.0, 35.0, 40.0)


def psnr_table(ddpm_rate, ddpm_psnr, lossy, dims, levels=PSNR_LEVELS) -> str:
    """Bits/dim each codec needs at each PSNR, and its ratio to DDPM's actual bits (> 1: DDPM wins)."""
    from . import baselines as bl

    names = sorted(lossy)
    head = "| PSNR (dB) | DDPM actual bits/dim |" + "".join(f" {n} (ratio) |" for n in names)
    lines = [head, "|" + "---|" * (2 + len(names))]
    for lv in levels:
        d = bl.rate_at_psnr(ddpm_rate, ddpm_psnr, lv)
        cells = []
        for n in names:
            by, rm = lossy[n]
            r = bl.rate_at_psnr(8 * by.mean(0) / dims, _psnr(np.sqrt((rm ** 2).mean(0))), lv)
            cells.append(" –" if not np.isfinite(r) else
                         f" {r:.3f} ({r / d:.2f})" if np.isfinite(d) else f" {r:.3f}")
        ds = f"{d:.3f}" if np.isfinite(d) else "–"
        lines.append(f"| {lv:g} | {ds} |" + "".join(f"{c} |" for c in cells))
    return "\n".join(lines)


def draw(store_path: str | Path, plot_path: str | Path, image_shape=(32, 32, 3)) -> list[str]:
    from . import plots

    agg = aggregate(store_path)
    dims = int(np.prod(image_shape))
    series = [{"label": "DDPM actual bits", "x": agg.actual_bpd, "y": _psnr(agg.rmse), "style": "-"},
              {"label": "DDPM KL bound", "x": agg.kl_bpd, "y": _psnr(agg.rmse), "style": "--"},
              {"label": "Ho et al. Table 4 (KL)", "x": PAPER_TABLE4[:, 1], "y": _psnr(PAPER_TABLE4[:, 2]), "style": "k:"}]
    _, lossy = baseline_summary(store_path)
    for name, (by, rm) in lossy.items():
        series.append({"label": name, "x": 8 * by.mean(0) / dims, "y": _psnr(np.sqrt((rm ** 2).mean(0))), "style": ".-"})
    p = Path(plot_path)
    a = plots.plot_rd([s for s in series], p, x="bits/dim (log)", y="PSNR (dB)", log_x=True,
                      title=f"rate-distortion, {agg.num_images} images", xlim=(1e-3, 8))
    t = agg.reverse_time
    b = plots.plot_vs_time([
        {"y": "rate (bits/dim)", "log_y": True, "series": [
            {"label": "actual", "x": 1000 - t + 1, "y": np.maximum(agg.actual_bpd, 1e-6)},
            {"label": "KL bound", "x": 1000 - t + 1, "y": np.maximum(agg.kl_bpd, 1e-6), "style": "--"},
            {"label": "paper", "x": 1000 - PAPER_TABLE4[:, 0] + 1, "y": np.maximum(PAPER_TABLE4[:, 1], 1e-6), "style": "k:"}]},
        {"y": "RMSE (0-255)", "series": [
            {"label": "x_hat_0", "x": 1000 - t + 1, "y": agg.rmse},
            {"label": "paper", "x": 1000 - PAPER_TABLE4[:, 0] + 1, "y": PAPER_TABLE4[:, 2], "style": "k:"}]},
    ], p.with_name(p.stem + "-time" + p.suffix), x="t (reverse process runs right to left)")
    return [a, b]
