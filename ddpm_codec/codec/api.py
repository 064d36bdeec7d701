"""The codec's public API: :func:`encode`, :func:`decode`, :func:`trace_theoretical`, and their results.

Each walks the one :class:`.chain.Chain`; the segment stream (:mod:`.stream`) and the x_0 stage
(:mod:`.x0`) hold the rest.
"""
from __future__ import annotations

import math
import time
import zlib
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, Literal

import numpy as np
import torch

from ..coding import container, entropy, rcc
from ..data import to_uint8
from ..errors import Error, InputError
from ..models.checkpoint import LoadedModel
from ..sample import reconstruct as _reconstruct_from
from .chain import Chain, Link, Net, deterministic_settings, warn_if_accelerated
from .profiles import default_settings, profile_of, read_header
from .settings import CodecSettings
from .stream import StepStream, pad4, stream_words
from .tiles import check_dimensions, check_image, from_tiles, inside_mask, tile_metrics, to_tiles
from .x0 import ContextX0Code, SideX0Code, X0Side, read_pixels_context, x0_model

Reconstruct = Literal["denoise", "ancestral", "flow"]
RECONSTRUCT_MODES = ("denoise", "ancestral", "flow")


class DecodeError(Error, ValueError):
    """A file cannot be decoded with this model (fingerprint or checksum mismatch)."""


@dataclass
class StepRecord:
    """One row of the progressive report (the paper's Table 4 with real bits)."""

    reverse_time: int        # T - t + 1 for the x_t reached
    t: int
    kl_bits: float           # KL(q || p) of this step, summed over tiles
    actual_bits: float       # bits this step adds to the stream: its code length under the coder's models (count
                             # model and path bits; the range coder's rounding, ~10-20 bits a file, comes on top)
    cum_kl_bpd: float        # cumulative KL bound (incl. L_T), bits/dim
    cum_bpd: float           # a file cut after this step (encode's max_reverse_time), bits/dim: its framing and
                             # the steps' code lengths in whole bytes (StepStream.prefix_table)
    rmse: float              # of x_hat_0 from x_t, 0-255
    psnr: float
    chunks: int


@dataclass
class EncodeResult:
    data: bytes
    steps: list[StepRecord]
    lossless: bool
    x0_bits: float = 0.0            # actual bits of the x_0 segment
    x0_ideal_bits: float = 0.0      # -log2 p(x_0 | x_tau) under the decoder as adapted by the side information
    x0_model_bits: float = 0.0      # -log2 p(x_0 | x_tau) under the model's own decoder (no side information)
    x0_side_bits: float = 0.0       # bits of per-tile side information (raw, all tiles)
    seconds: float = 0.0
    network_seconds: float = 0.0
    num_dims: int = 0
    accounting: "BitAccounting | None" = None   # where the file's bits go (as decode(..., account=True) finds)
    seed: int = 0                   # the file's seed (its codebook)
    seeds_tried: int = 1            # encode(..., effort=E): the files made (seed, seed + 1, ...); seconds: all of them

    @property
    def bits_per_dim(self) -> float:
        return 8 * len(self.data) / self.num_dims

    @property
    def model_bound_bpd(self) -> float:
        """The model's own code length for this image along the realised chain, per dim: the sum of the
        steps' KLs plus -log2 p(x_0 | x_tau) under the model's decoder (no per-image adaptation)."""
        kl = self.steps[-1].cum_kl_bpd if self.steps else 0.0
        return kl + self.x0_model_bits / self.num_dims

    @property
    def adapted_code_length_bpd(self) -> float:
        """Sum of KLs + -log2 p(x_0 | x_tau) under the decoder adapted to this image by the per-tile side
        information, + the side information's own bits, per dim. Not a bound: the adaptation is fitted to
        the image. With the learned context model (no side information) it is that model's code length
        along the realised chain."""
        kl = self.steps[-1].cum_kl_bpd if self.steps else 0.0
        return kl + (self.x0_ideal_bits + self.x0_side_bits) / self.num_dims


@dataclass
class DecodeResult:
    image: np.ndarray                   # uint8 [H, W, 3]
    lossless: bool                      # True when the exact pixels were decoded (checksum verified)
    reverse_time: int                   # the last decoded step's T - t + 1
    truncated: bool
    steps_decoded: int
    progressive: list[tuple[int, np.ndarray]] = field(default_factory=list)   # (reverse time, image)
    seconds: float = 0.0
    network_seconds: float = 0.0
    accounting: "BitAccounting | None" = None   # with decode(..., account=True)


@dataclass
class StepBits:
    """What one coding step's code costs, by the models it is coded with (bits)."""

    reverse_time: int
    t: int
    chunks: int          # all tiles
    count_bits: float    # -log2 P(chunk counts) under the count model
    index_bits: float    # the trellis path bits (PFR: buckets and offsets)


@dataclass
class BitAccounting:
    """Where a file's bits go (``decode(..., account=True)``; ``ddpm-codec info --bits``): the framing
    fields, each step's counts and indices, x_0, and what is left of the payload: the range coder's
    rounding and the bytes up to each cut ("coder overhead and padding")."""

    framing: list[tuple[str, int]]   # (field, bytes), in file order (no payloads)
    steps: list[StepBits]
    x0_bits: float | None            # -log2 p(x_0 | x_tau) under the file's x_0 model; None if not decoded
    payload_bytes: int
    num_dims: int

    @property
    def framing_bits(self) -> int:
        return 8 * sum(n for _, n in self.framing)

    @property
    def padding_bits(self) -> float:
        """Payload bits beyond the counts', indices' and x_0's model code lengths."""
        used = sum(s.count_bits + s.index_bits for s in self.steps) + (self.x0_bits or 0.0)
        return 8.0 * self.payload_bytes - used


def check_size(parsed: container.ParsedFile, max_pixels: int | None = None) -> None:
    """Refuse (:class:`DecodeError`) a file whose header declares more than ``max_pixels`` pixels
    (default ``tiles.MAX_CODEC_PIXELS``): from the header alone, before anything is allocated."""
    h = parsed.file.header
    try:
        check_dimensions(h.height, h.width, max_pixels)
    except ValueError as e:
        raise DecodeError(f"cannot decode: {e}") from None


def coding_fingerprint(model: LoadedModel, settings: CodecSettings) -> str:
    """The fingerprint a file coded with ``settings`` names: the model's own, or with a learned x_0
    context model, the one covering both (:attr:`LoadedModel.context_fingerprint`)."""
    if not settings.x0_context:
        return model.fingerprint
    ctx = model.x0_context
    if ctx is None:
        raise InputError(f"x_0 by a learned context model (x0_context=1), but model {model.name} has none; "
                         f"choose another profile or --x0-model")
    if ctx.config.tau != settings.t_end:
        raise InputError(f"model {model.name}'s x_0 context model was trained for tau {ctx.config.tau}, "
                         f"but the chain ends at t_end {settings.t_end}")
    return model.context_fingerprint


def crc_key(model: LoadedModel, settings: CodecSettings) -> bytes:
    """What a version-5 file's checksums cover before its bytes: the start of its coding fingerprint, so that a
    decoder with another model fails them even where the file's one fingerprint byte matches."""
    return bytes.fromhex(coding_fingerprint(model, settings)[:2 * container.CRC_KEY_BYTES])


def model_fits_file(parsed: container.ParsedFile, settings: CodecSettings, model: LoadedModel) -> bool:
    """Whether ``model`` can be the one that wrote the file, from its header alone: the fingerprint it names
    and, for a complete lossy version-5 file, the checksum keyed by the model's fingerprint (a lossless
    file's is checked with its pixels, after decoding)."""
    try:
        check_model(parsed, model, settings)
    except (DecodeError, container.DdpmFormatError, InputError):
        return False
    return True


def check_model(parsed: container.ParsedFile, model: LoadedModel, settings: CodecSettings | None = None) -> None:
    """Refuse (:class:`DecodeError`) a model that is not the one the file names (with ``settings``'s
    x_0 context model, where the file uses one)."""
    fp = parsed.file.header.fingerprint.hex()
    if settings is not None and settings.x0_context:
        if model.x0_context is None:
            raise DecodeError(f"the file codes x_0 with a learned context model (model {fp}), which model "
                              f"{model.name} ({model.fingerprint[:8]}) lacks: decode with the model that encoded it")
        have = model.context_fingerprint
    else:
        have = model.fingerprint
    if not have.startswith(fp):
        raise DecodeError(f"the file was encoded with model {fp}, but the model given is {model.name} "
                          f"({have[:8]}): decode with the same model (--model)")
    if settings is not None and not parsed.keyed_crc_matches(crc_key(model, settings)):
        raise container.CorruptFileError(
            f"checksum mismatch: the file is corrupted or truncated, or was encoded with another model whose "
            f"fingerprint also begins {fp}")


# ----------------------------------------------------------------------------- encode
MAX_EFFORT = 64   # encode(..., effort=E): at most this many seeds


def effort_key(result: "EncodeResult", to_rate: bool) -> tuple:
    """What ``encode(..., effort=E)`` minimises over its tries: the file's length; for a file cut at a rate
    (``to_rate``: ``max_bpd``, so every try is about as long), the furthest step reached, then the best PSNR
    of its reconstruction, then the length."""
    if not to_rate:
        return (len(result.data),)
    last = result.steps[-1] if result.steps else None
    psnr = last.psnr if last is not None and math.isfinite(last.psnr) else -math.inf
    reached = (last.reverse_time if last else 0) + (1 if result.lossless else 0)   # x_0 itself: one further
    return (-reached, -psnr, len(result.data))


def encode(image: np.ndarray, model: LoadedModel, *, settings: CodecSettings | None = None,
           max_reverse_time: int | None = None, max_bpd: float | None = None, min_psnr: float | None = None,
           lossless: bool | None = None,
           seed: int = 0, min_segment_bytes: int = 64, progress: Callable[[StepRecord], None] | None = None,
           metrics: bool = True, x0_in_stream: bool = True, max_pixels: int | None = None,
           threads: int | None = None, format_version: int | None = None,
           net: Net | None = None, effort: int = 1) -> EncodeResult:
    """Encode a uint8 RGB image ``[H, W, 3]`` to ``.ddpm`` bytes.

    Lossless (default) codes the whole chain and then x_0 exactly. ``max_reverse_time=N`` stops
    exactly at reverse time T - t + 1 = N (the x-axis of the paper's Table 4): the schedule's steps
    above it and, where N falls between two of its times, one step straight to t = T - N + 1 (format
    version 4; with a ``format_version`` given, after the last schedule step with T - t + 1 <= N). ``max_bpd``
    after the cumulative rate reaches it, ``min_psnr`` after the first step whose x_hat_0 (what
    :func:`decode` shows) reaches that PSNR in dB (lossless, PSNR infinite, if no step does); each
    makes the file lossy unless ``lossless=True``.
    ``min_segment_bytes``: all steps form one range-coded stream, cut into segments at step
    boundaries; a segment holds at least this many bytes and 2.5 times the previous one (64: 3-4
    segments in a lossless 32x32 file, at ~64, ~240 and ~700 bytes, each costing only its ~3-byte
    table entry). A file cut at a segment boundary decodes to that segment's last step.
    ``x0_in_stream``: a lossless file codes x_0 at the end of that stream (format versions 2 and 3); False
    writes version 1 (x_0 as an ANS payload of its own: ~5 bytes more, readable by releases before
    version 2). ``max_pixels``: refuse larger images (default ``tiles.MAX_CODEC_PIXELS``; memory
    grows with the size), before anything is allocated for them. ``threads``: for an exact file's
    network (default: torch's count, all cores) and the search (default 1); a float file's network
    always runs on one thread. Any count gives the same file. ``format_version``: None (the default)
    writes version 5 (``docs/FORMAT.md``: one fingerprint byte, checksums keyed by the whole fingerprint,
    no profile byte for profile 13, no step count for the last segment where the file is lossless or has a
    stop, no length for a single segment; the exact stop), or version 1 where
    ``x0_in_stream`` is False; 4 writes the framing of 2026-12-07 (version 3 lossless, version 4 lossy,
    with the exact stop); 3, 2 and 1 write those versions (no exact stop), for older readers (3: since
    2026-12-06; 2: since 2026-11-26).
    ``net``: the network to call (default the model's own; :func:`.batch.encode_many` passes one
    shared by several images).
    ``effort=E``: encode with the seeds ``seed`` .. ``seed + E - 1`` (each a different codebook, so each file
    a different length) and return the best (:func:`effort_key`: the smallest file; with ``max_bpd``, the one
    that reaches furthest, then the best PSNR): E times the work, the tries' network calls batched and run side
    by side on the threads (:func:`.batch.encode_tries`; ``progress`` sees every try's steps, from their
    threads; ``seconds``: the wall time of them all, ``network_seconds`` their network shares'). A seed other
    than 0 costs the file one byte (up to 127), counted.
    """
    if effort != 1:
        if not 1 <= int(effort) <= MAX_EFFORT:
            raise InputError(f"effort must be 1 to {MAX_EFFORT} (seeds to try), not {effort}")
        if not 0 <= seed <= container.MAX_SEED - effort + 1:
            raise InputError(f"seed {seed} + effort {effort} leaves the seed range")
        kw = dict(settings=settings, max_reverse_time=max_reverse_time, max_bpd=max_bpd, min_psnr=min_psnr,
                  lossless=lossless, min_segment_bytes=min_segment_bytes, progress=progress, metrics=metrics,
                  x0_in_stream=x0_in_stream, max_pixels=max_pixels, threads=threads, format_version=format_version)
        seeds, began = range(seed, seed + int(effort)), time.perf_counter()
        if net is None:   # the tries' network calls batched, in lanes (the same bytes)
            from .batch import encode_tries
            tries = encode_tries(image, model, seeds, **kw)
        else:             # inside encode_many: its shared network, one try after another
            tries = [encode(image, model, seed=s, net=net, **kw) for s in seeds]
        best = min(tries, key=lambda r: effort_key(r, max_bpd is not None))
        return replace(best, seeds_tried=len(tries), seconds=time.perf_counter() - began,
                       network_seconds=sum(r.network_seconds for r in tries))
    settings = settings or default_settings(model)
    image = check_image(image, max_pixels)
    if not settings.arithmetic.exact:
        warn_if_accelerated(model)
    height, width = image.shape[:2]
    diffusion = model.diffusion
    size = model.image_size
    x0 = to_tiles(image, size).double()
    num_dims = height * width * 3
    if lossless is None:
        lossless = max_reverse_time is None and max_bpd is None and min_psnr is None
    if min_psnr is not None and not metrics:
        raise InputError("min_psnr needs the per-step metrics (metrics=True)")
    if settings.variance == "fitted" and diffusion.x0_mse is None:
        raise InputError("this model has no fitted statistics (x0_mse); use --variance fixedsmall or run calibrate")
    if format_version not in (None, 1, 2, 3, 4, 5):
        raise InputError(f"unknown format version {format_version}; expected 1 to 5")
    if format_version is None:
        format_version = container.FORMAT_VERSION if x0_in_stream else 1
    x0_in_stream = format_version != 1
    compact = format_version >= container.COMPACT_VERSION
    keyed = format_version == container.KEYED_VERSION
    lossy_compact = format_version == container.LOSSY_VERSION   # 4: lossless in 3, lossy in 4
    fp_bytes = container.KEYED_FINGERPRINT_BYTES if keyed else container.COMPACT_FINGERPRINT_BYTES if compact else 4
    needs_v2 = settings.x0_scale_bits or settings.x0_channel_bits or settings.arithmetic.exact or settings.x0_context
    if lossless and needs_v2 and not x0_in_stream:
        raise InputError("per-tile x_0 side information, the context model or exact arithmetic needs format "
                         "version 2 (x0_in_stream=True)")
    fingerprint = coding_fingerprint(model, settings)
    stop = None   # --steps N between two of the schedule's times: one step straight to t = T - N + 1 (version 4)
    if max_reverse_time is not None and not lossless and (lossy_compact or keyed):
        t_stop = diffusion.num_timesteps - int(max_reverse_time) + 1
        ts = settings.timesteps(diffusion.num_timesteps)
        if ts[-1] < t_stop < diffusion.num_timesteps and t_stop not in ts:
            stop = t_stop
    chain = Chain(model, settings, tuple(x0.shape), threads, net, stop=stop)
    search_cfg = replace(chain.cfg, search_threads=threads or 1)   # encoder policy: any path decodes
    T, B = chain.T, x0.shape[0]
    gen = torch.Generator().manual_seed(seed ^ 0x5EED)   # the encoder's private randomness
    start = time.perf_counter()

    profile = profile_of(settings)
    header = container.Header(fingerprint=bytes.fromhex(fingerprint[:2 * fp_bytes]), height=height, width=width,
                              seed=seed, schedule=None if profile is not None else settings.to_schedule(),
                              profile=profile, lossless=lossless, one_stream=True,
                              x0_in_stream=lossless and x0_in_stream, compact=compact,
                              lossy_compact=lossy_compact and not lossless, stop=stop, keyed=keyed,
                              crc_key=crc_key(model, settings) if keyed else b"")
    lossy_header = replace(header, lossless=False, x0_in_stream=False, lossy_compact=lossy_compact, stop=None)

    stream = StepStream(B, chain.dims_tile, chain.cfg, min_segment_bytes)
    records: list[StepRecord] = []
    step_bits: list[StepBits] = []
    cum_kl = 0.0

    def send(link: Link):   # reverse channel coding of x_s ~ q(x_s | x_t, x_0) against p_theta(x_s | x_t)
        nonlocal sent
        mu_q, var_q = chain.target(link, x0)
        code, e, rep = rcc.encode_step(mu_q.reshape(B, -1), link.mu_p.reshape(B, -1), var_q, link.var_p, seed=seed,
                                       step=link.s, cfg=search_cfg, generator=gen, predicted_chunks=link.centres)
        step_bits.append(_step_bits(code, link, chain))
        stream.write(code, link.centres, step_bits[-1].count_bits + step_bits[-1].index_bits)
        sent = code, rep
        return chain.x_from_eps(link, e), code.num_chunks

    with deterministic_settings(settings.arithmetic):
        while chain.done < len(chain):
            sent = None
            link = chain.step(send)
            code, rep = sent
            kl = float(rep.kl_bits.sum())
            cum_kl += kl
            rmse = psnr = float("nan")
            if metrics:
                rmse, psnr = tile_metrics(diffusion.denoise(chain.x, link.s, chain.eps), image, height, width)
            table = stream.prefix_table()
            cut = replace(lossy_header, stop=link.s) if link.s == stop else lossy_header   # (the exact stop's file)
            cut_bytes = container.framing_size(cut, table) + sum(n for _, n in table)
            rec = StepRecord(reverse_time=T - link.s + 1, t=link.s, kl_bits=kl,
                             actual_bits=step_bits[-1].count_bits + step_bits[-1].index_bits,
                             cum_kl_bpd=cum_kl / num_dims, cum_bpd=8.0 * cut_bytes / num_dims,
                             rmse=rmse, psnr=psnr, chunks=int(np.sum(code.num_chunks)))
            records.append(rec)
            if progress:
                progress(rec)
            stream.maybe_end_segment()
            if (max_reverse_time is not None and chain.done < len(chain)
                    and chain.reverse_time(chain.done) > max_reverse_time) \
                    or (max_bpd is not None and rec.cum_bpd >= max_bpd) \
                    or (min_psnr is not None and rec.psnr >= min_psnr):
                break
        if min_psnr is not None and not lossless and chain.done == len(chain) and records[-1].psnr < min_psnr:
            # no step reached the target: x_0 exactly
            lossless = True
            header = replace(header, lossless=True, x0_in_stream=x0_in_stream, lossy_compact=False)
        x0_payload, crc, x0_bits, x0_ideal, x0_own, x0_side = None, None, 0.0, 0.0, 0.0, 0.0
        if lossless:
            if chain.done < len(chain):
                raise InputError("a lossless file needs the whole chain: drop max_reverse_time/max_bpd")
            means, scales = x0_model(diffusion, chain.x, chain.ts[-1], chain.eps, settings.variance)
            mask = inside_mask(height, width, size)
            tiles_pix = ((x0 + 1.0) * 127.5).round().to(torch.int64).numpy().astype(np.uint8)
            pix = tiles_pix[mask]
            x0_own = float(entropy.ideal_bits(pix, means[mask], scales[mask]))
            if settings.x0_context:
                code = ContextX0Code(chain.net.context(), tiles_pix, chain.x,
                                     torch.from_numpy(means), mask)
            else:
                side = X0Side.choose(settings, tiles_pix, means, scales, mask)
                eff_means, eff_scales = side.apply(means, scales, tiles_pix, mask)
                x0_ideal = float(entropy.ideal_bits(pix, eff_means[mask], eff_scales[mask]))
                x0_side = float(side.num_bits())
                code = SideX0Code(side, tiles_pix, means, scales, mask)
            if header.x0_in_stream:
                before = stream.num_bits()
                stream.write_x0(code)
                x0_bits = float(stream.num_bits() - before)
                if settings.x0_context:
                    x0_ideal = code.ideal_bits()
            else:
                x0_payload = entropy.encode_pixels(pix, means[mask], scales[mask])
                x0_bits = 8.0 * len(x0_payload)
            crc = zlib.crc32(image.tobytes())
        segments = stream.segments()
    data = container.pack(container.DdpmFile(header=header, segments=segments, x0=x0_payload, pixel_crc=crc))
    parsed = container.unpack(data)
    accounting = BitAccounting(framing=parsed.fields, steps=step_bits,
                               x0_bits=x0_ideal + x0_side if lossless else None,
                               payload_bytes=len(data) - parsed.framing_bytes(), num_dims=num_dims)
    return EncodeResult(data=data, steps=records, lossless=lossless, x0_bits=x0_bits, x0_ideal_bits=x0_ideal,
                        x0_model_bits=x0_own, x0_side_bits=x0_side, seconds=time.perf_counter() - start,
                        network_seconds=chain.net.seconds, num_dims=num_dims, accounting=accounting, seed=seed)


# ----------------------------------------------------------------------------- decode
def decode(data: bytes, model: LoadedModel, *, steps: int | None = None, reconstruct: Reconstruct = "denoise",
           progressive: bool = False, reconstruct_steps: int = 50, seed: int = 0,
           on_step: Callable[[int, int], None] | None = None, max_pixels: int | None = None,
           threads: int | None = None, account: bool = False, net: Net | None = None) -> DecodeResult:
    """Decode ``.ddpm`` bytes. ``steps=N`` uses only the coding steps with T - t + 1 <= N and
    reconstructs from the last one with ``reconstruct``; without ``steps`` a lossless file decodes
    exactly (checksum verified) and a lossy or truncated one from its last complete step.
    ``max_pixels``: refuse a file whose header declares a larger image (default
    ``tiles.MAX_CODEC_PIXELS``), before anything is allocated for it. ``threads``: for an exact
    file's network (default: torch's count, all cores; the same image for any count). ``account``:
    also measure where the file's bits go (:class:`BitAccounting` in ``accounting``). ``net``: as
    :func:`encode`'s (:func:`.batch.decode_many`)."""
    if reconstruct not in RECONSTRUCT_MODES:
        raise InputError(f"unknown reconstruction {reconstruct!r}; expected one of {', '.join(RECONSTRUCT_MODES)}")
    parsed, settings = read_header(data)
    check_size(parsed, max_pixels)   # the header's size, before the chain allocates its tiles
    check_model(parsed, model, settings)
    h = parsed.file.header
    diffusion = model.diffusion
    size = model.image_size
    height, width = h.height, h.width
    B = (-(-height // size)) * (-(-width // size))
    shape = (B, 3, size, size)
    try:
        chain = Chain(model, settings, shape, threads, net, stop=h.stop)
    except ValueError as e:
        if h.stop is None:
            raise
        raise container.CorruptFileError(f"{e}: the file is corrupted") from None
    T = chain.T
    start = time.perf_counter()
    import constriction

    one_dec = None
    if h.one_stream:  # the complete segments are consecutive pieces of one stream
        one_dec = constriction.stream.queue.RangeDecoder(stream_words(b"".join(s.payload for s in parsed.file.segments)))

    def step_decoders() -> Iterator:
        i, dec = 0, one_dec
        for seg in parsed.file.segments:
            if not h.one_stream:
                dec = constriction.stream.queue.RangeDecoder(np.frombuffer(pad4(seg.payload), dtype=np.uint32).copy())
            n = seg.num_steps
            if n == 0 and h.keyed:
                n = len(chain) - i   # version 5: the last segment holds the rest of the chain (to its end or stop)
                if n < 1:
                    raise container.CorruptFileError("the file's segments hold more coding steps than its chain")
            for _ in range(n):
                if i >= len(chain):
                    raise container.CorruptFileError("the file holds more coding steps than its schedule")
                yield dec
                i += 1

    def recon(mode: str) -> np.ndarray:
        est = _reconstruct_from(chain.net, diffusion, chain.x, chain.last_t, chain.eps, mode, reconstruct_steps, seed)
        return from_tiles(to_uint8(est), height, width)

    shots: list[tuple[int, np.ndarray]] = []
    step_bits: list[StepBits] = []
    x0_bits: list[float] = []
    with deterministic_settings(settings.arithmetic):
        for dec in step_decoders():
            if steps is not None and chain.reverse_time(chain.done) > steps:
                break

            def send(link: Link, dec=dec):   # read the step's code; ε from the shared candidates
                try:
                    code = rcc.read_step(dec, B, chain.dims_tile, chain.cfg, link.centres)
                except (ValueError, RuntimeError) as e:
                    raise container.CorruptFileError(f"coding step {link.index} cannot be read: {e}") from None
                e_ = rcc.decode_step(code, dim=chain.dims_tile, seed=h.seed, step=link.s, cfg=chain.cfg)
                if account:
                    step_bits.append(_step_bits(code, link, chain))
                return chain.x_from_eps(link, e_), code.num_chunks

            chain.step(send)
            if progressive:
                shots.append((T - chain.last_t + 1, recon(reconstruct)))
            if on_step:
                on_step(chain.done, len(chain))
        if chain.done == 0:
            raise DecodeError("the file holds no complete coding step (truncated inside its first segment?)")
        exact = None
        full_chain = chain.done == len(chain) and steps is None
        x0_present = parsed.file.x0 is not None or (h.x0_in_stream and parsed.pixels_present)
        if full_chain and x0_present:
            exact = _decode_x0(parsed, settings, chain, one_dec, height, width, size,
                               x0_bits if account else None, crc_key(model, settings))
        image = exact if exact is not None else recon(reconstruct)
    accounting = None
    if account:
        accounting = BitAccounting(
            framing=[(n, b) for n, b in parsed.fields], steps=step_bits, x0_bits=x0_bits[0] if x0_bits else None,
            payload_bytes=len(data) - parsed.framing_bytes(), num_dims=height * width * 3)
    return DecodeResult(image=image, lossless=exact is not None, reverse_time=T - chain.last_t + 1,
                        truncated=parsed.truncated, steps_decoded=chain.done, progressive=shots,
                        seconds=time.perf_counter() - start, network_seconds=chain.net.seconds,
                        accounting=accounting)


def _step_bits(code, link: Link, chain: Chain) -> StepBits:
    """One step's model code lengths: its counts under the count model, its indices."""
    from ..coding.rcc.bitstream import count_code_bits, index_code_bits

    cfg = chain.cfg
    return StepBits(reverse_time=chain.T - link.s + 1, t=link.s, chunks=int(np.sum(code.num_chunks)),
                    count_bits=count_code_bits(code.num_chunks, chain.dims_tile, cfg, link.centres),
                    index_bits=sum(index_code_bits(idx, cfg) for idx in code.indices))


def _decode_x0(parsed: container.ParsedFile, settings: CodecSettings, chain: Chain, one_dec,
               height: int, width: int, size: int, x0_bits: list | None = None, key: bytes = b"") -> np.ndarray:
    """The exact image from the end of a complete chain (checksum verified). ``x0_bits``: a list to
    append x_0's model code length to (the context model's or Eq. 13's as adapted, with the side
    information's raw bits)."""
    h = parsed.file.header
    means, scales = x0_model(chain.diffusion, chain.x, chain.ts[-1], chain.eps, settings.variance)
    mask = inside_mask(height, width, size)
    if (settings.x0_scale_bits or settings.x0_channel_bits or settings.x0_context) and not h.x0_in_stream:
        raise container.CorruptFileError("a version 1 file cannot carry per-tile x0 side information or "
                                         "context-model x0")
    try:
        if settings.x0_context:
            ctx = chain.net.context()
            pix = read_pixels_context(one_dec, ctx, chain.x, torch.from_numpy(means), mask)[mask]
        elif h.x0_in_stream:
            pix = X0Side.read(one_dec, settings, chain.shape[0]).read_pixels(one_dec, means, scales, mask)[mask]
        else:
            pix = entropy.decode_pixels(parsed.file.x0, means[mask], scales[mask])
    except ValueError:
        pix = None
    exact = None
    if pix is not None:
        tiles = np.zeros(chain.shape, dtype=np.uint8)
        tiles[mask] = pix
        exact = from_tiles(tiles.transpose(0, 2, 3, 1), height, width)
        if x0_bits is not None:
            x0_bits.append(_x0_code_bits(settings, chain, tiles, means, scales, mask))
    if exact is None or not parsed.pixels_match(exact.tobytes(), key):
        raise DecodeError("decoded pixels fail the file's checksum: this machine's network outputs differ "
                          "from the encoder's (other hardware or library version?), or the file is damaged")
    return exact


def _x0_code_bits(settings: CodecSettings, chain: Chain, tiles_pix: np.ndarray, means, scales, mask) -> float:
    """x_0's model code length for decoded pixels, as the encoder measures it (``EncodeResult``)."""
    if settings.x0_context:
        import constriction

        code = ContextX0Code(chain.net.context(), tiles_pix, chain.x, torch.from_numpy(means), mask)
        code.write(constriction.stream.queue.RangeEncoder())   # the passes' parameters, as the encoder's
        return code.ideal_bits()
    if not (settings.x0_scale_bits or settings.x0_channel_bits):
        return float(entropy.ideal_bits(tiles_pix[mask], means[mask], scales[mask]))
    side = X0Side.choose(settings, tiles_pix, means, scales, mask)
    eff_means, eff_scales = side.apply(means, scales, tiles_pix, mask)
    return float(entropy.ideal_bits(tiles_pix[mask], eff_means[mask], eff_scales[mask])) + float(side.num_bits())


# ----------------------------------------------------------------------------- KL-only trace
def trace_theoretical(image: np.ndarray, model: LoadedModel, *, settings: CodecSettings | None = None,
                      seed: int = 0) -> EncodeResult:
    """The paper's own evaluation (Sec. 4.3): the same chain and report as :func:`encode`, but each
    x_s is drawn exactly from q(x_s | x_t, x_0) and only the KLs are counted (no bits written)."""
    settings = settings or default_settings(model)
    image = check_image(image)
    height, width = image.shape[:2]
    diffusion = model.diffusion
    x0 = to_tiles(image, model.image_size).double()
    num_dims = height * width * 3
    chain = Chain(model, settings, tuple(x0.shape))
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    records, cum_kl = [], 0.0

    def send(link: Link):   # an exact draw from q, and the step's KL in bits
        nonlocal kl
        if link.index == 0:
            q = diffusion.q_mean_variance(x0, chain.T)
            kl = float(diffusion.prior_kl(x0).sum()) / math.log(2)
        else:
            kl = float(diffusion.step_kl(x0, chain.x, link.t, chain.eps, link.s, settings.variance).sum()) / math.log(2)
            q = diffusion.q_posterior(x0, chain.x, link.t, link.s)
        return q.mean + torch.sqrt(q.variance) * torch.randn(x0.shape, generator=gen, dtype=torch.float64), None

    with deterministic_settings(settings.arithmetic):
        while chain.done < len(chain):
            kl = 0.0
            link = chain.step(send)
            cum_kl += kl
            rmse, psnr = tile_metrics(diffusion.denoise(chain.x, link.s, chain.eps), image, height, width)
            records.append(StepRecord(reverse_time=chain.T - link.s + 1, t=link.s, kl_bits=kl, actual_bits=float("nan"),
                                      cum_kl_bpd=cum_kl / num_dims, cum_bpd=float("nan"), rmse=rmse, psnr=psnr, chunks=0))
        means, scales = x0_model(diffusion, chain.x, chain.ts[-1], chain.eps, settings.variance)
        mask = inside_mask(height, width, model.image_size)
        pix = ((x0 + 1.0) * 127.5).round().to(torch.int64).numpy().astype(np.uint8)
        x0_ideal = float(entropy.ideal_bits(pix[mask], means[mask], scales[mask]))
    return EncodeResult(data=b"", steps=records, lossless=True, x0_bits=float("nan"), x0_ideal_bits=x0_ideal,
                        x0_model_bits=x0_ideal, seconds=time.perf_counter() - start,
                        network_seconds=chain.net.seconds, num_dims=num_dims)
