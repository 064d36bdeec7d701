"""Lossless archives of image sets by bits-back coding over the DDPM's chain (issue 27).

A set of images is coded on one ANS stack per chunk (:mod:`ddpm_codec.coding.bitsback`), each
image in the order of Bit-Swap (Kingma, Abbeel & Ho 2019) over the chain ``tau = t_1 < t_2 < ...
< t_S = T`` (the per-image codec's timesteps, ``respaced_timesteps(..., arithmetic=EXACT)``):

    encoder                                           decoder (the exact reverse)
    pop    x_tau ~ q(x_tau | x_0)                     pop   x_T ~ N(0, I)
    push   x_0  under the context model given x_tau   for k = S .. 2:
    for k = 2 .. S:                                     pop   x_{t_{k-1}} ~ p(. | x_{t_k})
      pop  x_{t_k} ~ q(x_{t_k} | x_{t_{k-1}})           push  x_{t_k} under q(. | x_{t_{k-1}})
      push x_{t_{k-1}} under p(. | x_{t_k})           pop   x_0 under the context model given x_tau
    push   x_T under N(0, I)                          push  x_tau under q(x_tau | x_0)

``q(x_t | x_s) = N(sqrt(abar_t / abar_s) x_s, (1 - abar_t / abar_s) I)`` is the forward process
(Eq. 4 over a stride), ``p(x_s | x_t)`` the model's reverse step with the KL-optimal "fitted"
variance (:meth:`GaussianDiffusion.p_mean_variance`), x_0's model the shipped learned context
model in exact arithmetic, pass by pass (:func:`.x0.write_pixels_context`). An image then costs,
on average, the negative ELBO of that chain: ``L_T + sum of the steps' KLs + x_0's code length``
(the same expectation as ``q(x_s | x_t, x_0)`` popped from T down, but a pop of one step's
latents at a time needs ~1 image of initial bits instead of ~S). Every latent lives on a grid
(:func:`ddpm_codec.coding.bitsback.grid_for`: 2^g to 2^(g+1) bins per std of its narrower
Gaussian, ``g = grid_bits``); every model is exact integers, the network the exact fixed-point
U-Net: an archive extracts bit-exactly on any machine.

Chunks of ``chunk_images`` images are independent stacks: extracting one image decodes its
chunk's images from the last down to it. Initial bits: a chunk's first ``seed_images`` images are
coded by the per-image codec (exact profile 13; 12 before 2026-12-07) and their files form the stack's bottom, which the
next images pop (~35 kbit of the ~38 kbit a chunk needs at the default grid); whatever is missing
comes from virtual words (``AnsStack.virtual_used``), which cost their bits. Format:
``docs/FORMAT.md``, "Archives"; measurements: ``docs/results/archive.md``.
"""
from __future__ import annotations

import math
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable

import numpy as np
import torch

from ..arithmetic import EXACT
from ..coding import bitsback, container, exact_entropy
from ..coding.bitsback import AnsError, AnsStack, LatentGrid
from ..diffusion import respaced_timesteps
from ..errors import Error, InputError
from ..models.checkpoint import LoadedModel
from .chain import Net
from .profiles import PROFILES
from .settings import SCHEDULE_KINDS, CodecSettings
from .tiles import check_dimensions, check_image, from_tiles, inside_mask, to_tiles
from .x0 import read_pixels_context, write_pixels_context, x0_model

MAGIC = b"\x8dDPA"
VERSION = 2                  # written; 1 and 2 are read (docs/FORMAT.md, "Archives")
_VERSIONS = (1, 2)
LATENT_RANGE = 8.0          # every latent's grid covers [-8, 8] (x_T ~ N(0, I); data in [-1, 1])
PIXEL_PRECISION = exact_entropy.PRECISION
X0_KEY = 1 << 20             # whitening keys: latent k under q 2k, under p 2k + 1; x_0's coder calls X0_KEY + i
_FIXED = len(MAGIC) + 1 + 4          # magic, version, index length
_CRC = 4


class ArchiveError(Error, ValueError):
    """Bytes that are not a readable archive (foreign, another version, a damaged index), or a chunk
    that cannot be extracted."""


@dataclass(frozen=True)
class ArchiveSettings:
    """How an archive is coded; all of it is written to the archive's index."""

    num_steps: int = 48          # Gaussian latents x_T .. x_tau (profile 12's chain: 48 cubic steps to tau)
    spacing: str = "cubic"
    grid_bits: int = 4           # latent bins per std: 2^grid_bits .. 2^(grid_bits + 1)
    chunk_images: int = 100      # images per independent stack
    seed_images: int = 3         # a chunk's first images as per-image .ddpm files at its stack's bottom (the
                                 # next images' initial bits: ~37 kbit a chunk otherwise; 0: virtual words only)

    def __post_init__(self):
        if self.spacing not in SCHEDULE_KINDS:
            raise InputError(f"unknown spacing {self.spacing!r}; expected one of {', '.join(SCHEDULE_KINDS)}")
        if not 0 <= self.grid_bits <= 10:
            raise InputError(f"grid_bits must be in [0, 10], got {self.grid_bits}")
        if not 1 <= self.chunk_images <= 1 << 20:
            raise InputError(f"chunk_images must be in [1, 2^20], got {self.chunk_images}")
        if not 1 <= self.num_steps <= 1 << 16:
            raise InputError(f"num_steps must be in [1, 65536], got {self.num_steps}")
        if not 0 <= self.seed_images <= 255:
            raise InputError(f"seed_images must be in [0, 255], got {self.seed_images}")


@dataclass
class ImageEntry:
    name: str
    height: int
    width: int
    check: int          # of the pixels (uint8 [H, W, 3], C order): version 1 CRC-32, 2 CRC-16 (image_check)


def image_check(img: np.ndarray, version: int = VERSION) -> int:
    """An image's check in the index: version 1 the CRC-32 (zlib) of its pixels' bytes, version 2
    their CRC-16/CCITT-FALSE (:func:`.container.crc16`; the chunk's CRC-32 over all its pixels
    backs it up whenever a whole chunk is extracted)."""
    b = np.ascontiguousarray(img).tobytes()
    return zlib.crc32(b) if version == 1 else container.crc16(b)


def pixels_crc(images: Iterable[np.ndarray]) -> int:
    """CRC-32 (zlib) of the images' pixel bytes one after the other: a version-2 chunk's pixel check."""
    crc = 0
    for img in images:
        crc = zlib.crc32(np.ascontiguousarray(img).tobytes(), crc)
    return crc


@dataclass
class ChunkEntry:
    num_images: int
    offset: int         # of the payload, from the start of the archive
    length: int
    crc: int            # CRC-32 of the payload
    seed_files: list[int] = field(default_factory=list)   # byte lengths of the .ddpm files at the stack's bottom
    pixels_crc: int | None = None                          # version 2: CRC-32 of its images' pixels (pixels_crc)


@dataclass
class ArchiveIndex:
    """What an archive's index says (:func:`read_index`)."""

    fingerprint: bytes
    settings: ArchiveSettings
    t_end: int
    images: list[ImageEntry]
    chunks: list[ChunkEntry]
    index_bytes: int    # magic to the index's CRC, inclusive
    version: int = VERSION

    def chunk_of(self, i: int) -> int:
        return i // self.settings.chunk_images


@dataclass
class ImageStats:
    """One image's costs in an archive (bits over the whole image; dims = H * W * 3)."""

    name: str
    dims: int
    stack_bits: float       # growth of the chunk's stack over this image, virtual words included
    virtual_bits: float     # initial bits this image took from the virtual words
    push_bits: float        # -log2 of the integer probabilities of everything pushed (latents and x_0)
    pop_bits: float         # -log2 of those of everything popped (the bits back)
    x0_bits: float          # of push_bits: x_0 under the context model
    kl_bits: float          # L_T + sum of the steps' KL(q(x_s|x_t,x_0) || p(x_s|x_t)) at the realised latents
    network_seconds: float
    seconds: float


@dataclass
class ArchiveResult:
    data: bytes
    stats: list[ImageStats]
    seconds: float = 0.0
    network_seconds: float = 0.0
    index_bytes: int = 0

    @property
    def num_dims(self) -> int:
        return sum(s.dims for s in self.stats)

    @property
    def bits_per_dim(self) -> float:
        return 8 * len(self.data) / self.num_dims


@dataclass
class DamagedChunk:
    chunk: int
    names: list[str]
    reason: str


@dataclass
class ExtractResult:
    images: list[tuple[str, np.ndarray]]
    damaged: list[DamagedChunk] = field(default_factory=list)
    seconds: float = 0.0
    network_seconds: float = 0.0


# ----------------------------------------------------------------------------- the chain both sides walk

class BitsBackChain:
    """The latents' times, forward and reverse Gaussians and grids of one archive, for a model."""

    def __init__(self, model: LoadedModel, settings: ArchiveSettings, t_end: int):
        d = model.diffusion
        if model.config.get("diffusion", {}).get("schedule", "linear") != "linear":
            raise InputError("archives need a linear beta schedule (exact arithmetic; the cosine one uses libm)")
        if d.x0_mse is None:
            raise InputError(f"model {model.name} has no fitted statistics (x0_mse): run `ddpm-codec calibrate`")
        self.model, self.diffusion, self.settings = model, d, settings
        T = d.num_timesteps
        if settings.num_steps > T - t_end + 1:
            raise InputError(f"num_steps must be at most {T - t_end + 1} for this model, got {settings.num_steps}")
        self.times = respaced_timesteps(settings.num_steps, T, kind=settings.spacing, t_end=t_end,
                                        arithmetic=EXACT)[::-1]                       # tau .. T, increasing
        ab = d.alphas_cumprod
        prev = [0] + self.times[:-1]
        ratio = [float(ab[t]) / float(ab[s]) for t, s in zip(self.times, prev)]
        self.fwd_coef = [math.sqrt(r) for r in ratio]                # q(x_t | x_prev): mean coef, std
        self.fwd_std = [math.sqrt(1.0 - r) for r in ratio]
        like = torch.zeros(1, dtype=torch.float64)
        # p(x_{t_k} | x_{t_{k+1}}) std for k < S; x_T: N(0, I)
        self.rev_std = [math.sqrt(float(d.p_variance(t_next, t, "fitted", like)))
                        for t, t_next in zip(self.times[:-1], self.times[1:])] + [1.0]
        self.grids = [bitsback.grid_for(min(f, r), settings.grid_bits, LATENT_RANGE)
                      for f, r in zip(self.fwd_std, self.rev_std)]
        self.tau = t_end

    def __len__(self) -> int:
        return len(self.times)

    def p_mean(self, x: torch.Tensor, k: int, eps: torch.Tensor) -> np.ndarray:
        """Mean of p(x_{t_{k-1}} | x_{t_k} = x) (float64, flat), from the network's ``eps`` at x."""
        p = self.diffusion.p_mean_variance(x, self.times[k], eps, self.times[k - 1], "fitted")
        return p.mean.numpy().reshape(-1)


def _tensor(grid: LatentGrid, j: np.ndarray, shape) -> torch.Tensor:
    return torch.from_numpy(grid.values(j).reshape(shape))


class _Recorder:
    """Stands in for the range coder that :func:`.x0.write_pixels_context` writes to: keeps each
    call's symbols and integer CDF rows, to be pushed on the stack in reverse."""

    def __init__(self):
        self.calls: list[tuple[np.ndarray, np.ndarray]] = []

    def encode(self, symbols, _family, weights):
        self.calls.append((np.asarray(symbols, np.int64), _cdf_rows(weights)))


class _StackReader:
    """Stands in for the range decoder that :func:`.x0.read_pixels_context` reads from: pops the stack."""

    def __init__(self, stack: AnsStack):
        self.stack, self.calls = stack, 0

    def decode(self, _family, weights):
        self.calls += 1
        return self.stack.pop_table(_cdf_rows(weights), PIXEL_PRECISION, key=X0_KEY + self.calls - 1)


def _cdf_rows(weights) -> np.ndarray:
    """exact_entropy's coder weights ``f - 1`` (integers in float64, ``[N, 256]``) as CDF rows
    ``[N, 257]`` from 0 to 2^24: the frequencies it codes with, exactly."""
    f = np.asarray(weights).astype(np.int64) + 1
    cdf = np.zeros((f.shape[0], f.shape[1] + 1), np.int64)
    np.cumsum(f, axis=1, out=cdf[:, 1:])
    return cdf


def _table_bits(symbols: np.ndarray, cdf: np.ndarray, precision: int) -> float:
    idx = np.arange(len(symbols))
    f = cdf[idx, symbols + 1] - cdf[idx, symbols]
    return float(np.sum(precision - np.log2(f)))


def _gauss_bits(j, mus, sigma, grid, floor: bool = True) -> float:
    f = bitsback.gaussian_frequencies(j, mus, sigma, grid, floor=floor)
    return float(np.sum(bitsback.LATENT_PRECISION - np.log2(f)))


def _context(model: LoadedModel, net: Net):
    if model.x0_context is None:
        raise InputError(f"archives code x_0 with a learned context model, and model {model.name} has none")
    return net.context()


def encode_image(stack: AnsStack, chain: BitsBackChain, net: Net, ctx, image: np.ndarray, name: str = "",
                 measure: bool = True) -> ImageStats:
    """Code one image onto ``stack`` (Bit-Swap order, module docstring). ``measure``: also the
    ideal push/pop bits and the realised chain's KLs (float reports; the stack does not use them)."""
    start, net0 = time.perf_counter(), net.seconds
    bits0, virt0 = stack.num_bits(), stack.virtual_used
    h, w = image.shape[:2]
    size = chain.model.image_size
    x0 = to_tiles(image, size).double()
    shape = tuple(x0.shape)
    mask = inside_mask(h, w, size)
    tiles_pix = ((x0 + 1.0) * 127.5).round().to(torch.int64).numpy().astype(np.uint8)
    d = chain.diffusion
    push = pop = x0_bits = kl = 0.0
    prev = x0.numpy().reshape(-1)
    j_prev = None
    for k, t in enumerate(chain.times):
        mu_f = chain.fwd_coef[k] * prev
        j = stack.pop_gaussian(mu_f, chain.fwd_std[k], chain.grids[k], floor=False, key=2 * k)
        x = _tensor(chain.grids[k], j, shape)
        eps = net(x, t)
        if measure:
            pop += _gauss_bits(j, mu_f, chain.fwd_std[k], chain.grids[k], floor=False)
        if k == 0:
            xhat = torch.from_numpy(x0_model(d, x, t, eps, "fitted")[0])
            rec = _Recorder()
            write_pixels_context(rec, ctx, tiles_pix, x, xhat, mask)
            for i in range(len(rec.calls) - 1, -1, -1):
                syms, cdf = rec.calls[i]
                stack.push_table(syms, cdf, PIXEL_PRECISION, key=X0_KEY + i)
                if measure:
                    x0_bits += _table_bits(syms, cdf, PIXEL_PRECISION)
        else:
            mu_p = chain.p_mean(x, k, eps)
            stack.push_gaussian(j_prev, mu_p, chain.rev_std[k - 1], chain.grids[k - 1], key=2 * k - 1)
            if measure:
                push += _gauss_bits(j_prev, mu_p, chain.rev_std[k - 1], chain.grids[k - 1])
                kl += float(d.step_kl(x0, x, t, eps, chain.times[k - 1], "fitted").sum()) / math.log(2)
        j_prev, prev = j, x.numpy().reshape(-1)
    zeros = np.zeros(j_prev.size)
    stack.push_gaussian(j_prev, zeros, 1.0, chain.grids[-1], key=2 * len(chain) - 1)
    if measure:
        push += _gauss_bits(j_prev, zeros, 1.0, chain.grids[-1])
        kl += float(d.prior_kl(x0).sum()) / math.log(2)
    virt = 32.0 * (stack.virtual_used - virt0)
    return ImageStats(name=name, dims=h * w * 3, stack_bits=stack.num_bits() - bits0 + virt, virtual_bits=virt,
                      push_bits=push + x0_bits, pop_bits=pop, x0_bits=x0_bits, kl_bits=kl,
                      network_seconds=net.seconds - net0, seconds=time.perf_counter() - start)


def decode_image(stack: AnsStack, chain: BitsBackChain, net: Net, ctx, height: int, width: int) -> np.ndarray:
    """Inverse of :func:`encode_image`: pops the image last pushed on ``stack`` (uint8 ``[H, W, 3]``)
    and pushes back the bits its encoder took. Raises :class:`AnsError` / ValueError on bad data."""
    size = chain.model.image_size
    b = (-(-height // size)) * (-(-width // size))
    shape = (b, 3, size, size)
    mask = inside_mask(height, width, size)
    d = chain.diffusion
    n = b * 3 * size * size
    j = stack.pop_gaussian(np.zeros(n), 1.0, chain.grids[-1], key=2 * len(chain) - 1)
    for k in range(len(chain) - 1, -1, -1):
        t = chain.times[k]
        x = _tensor(chain.grids[k], j, shape)
        eps = net(x, t)
        if k > 0:
            j_s = stack.pop_gaussian(chain.p_mean(x, k, eps), chain.rev_std[k - 1], chain.grids[k - 1],
                                     key=2 * k - 1)
            prev = chain.grids[k - 1].values(j_s)
        else:
            xhat = torch.from_numpy(x0_model(d, x, t, eps, "fitted")[0])
            tiles = read_pixels_context(_StackReader(stack), ctx, x, xhat, mask)
            image = from_tiles(tiles.transpose(0, 2, 3, 1), height, width)
            prev = to_tiles(image, size).double().numpy().reshape(-1)
        stack.push_gaussian(j, chain.fwd_coef[k] * prev, chain.fwd_std[k], chain.grids[k], floor=False, key=2 * k)
        j = j_s if k > 0 else None
    return image


# ----------------------------------------------------------------------------- the container

def _fingerprint(model: LoadedModel) -> bytes:
    if model.x0_context is None:
        raise InputError(f"archives code x_0 with a learned context model, and model {model.name} has none")
    return bytes.fromhex(model.context_fingerprint[:8])


def _check_name(name: str) -> str:
    p = PurePosixPath(name)
    if (not name or len(name.encode("utf-8")) > 4096 or p.is_absolute() or "\\" in name or "\x00" in name
            or any(part in ("", ".", "..") for part in name.split("/"))):
        raise InputError(f"image name {name!r} is not a relative path of plain parts")
    return name


@dataclass
class PackedChunk:
    """What the index records of a chunk as it is written: its seed files' lengths, its payload
    (the stack) and the CRC-32 of its images' pixels (:func:`pixels_crc`)."""

    seed_files: list[int]
    payload: bytes
    pixels_crc: int


def _front_code(names: list[str]) -> bytes:
    """Names as version 2 stores them: each the length of the prefix (UTF-8 bytes) it shares with the
    previous name, the length of the rest, the rest (``set/0001``, ``set/0002``: 3 bytes, then zlib)."""
    v, out, prev = container.varint_encode, bytearray(), b""
    for name in names:
        nb = name.encode("utf-8")
        k = 0
        while k < min(len(nb), len(prev)) and nb[k] == prev[k]:
            k += 1
        out += v(k) + v(len(nb) - k) + nb[k:]
        prev = nb
    return bytes(out)


def _pack_index(fingerprint: bytes, settings: ArchiveSettings, t_end: int, images: list[ImageEntry],
                chunks: list[PackedChunk]) -> bytes:
    """The index (version :data:`VERSION`); ``images``' checks are :func:`image_check`'s."""
    v = container.varint_encode
    body = bytearray(fingerprint)
    body += v(settings.num_steps) + bytes([SCHEDULE_KINDS.index(settings.spacing), settings.grid_bits,
                                           settings.seed_images])
    body += v(t_end) + v(settings.chunk_images) + v(len(images)) + v(len(chunks))
    for ch in chunks:
        body += v(len(ch.payload)) + zlib.crc32(ch.payload).to_bytes(4, "little")
        body += ch.pixels_crc.to_bytes(4, "little") + v(len(ch.seed_files)) + b"".join(v(n) for n in ch.seed_files)
    body += b"".join(v(e.height) + v(e.width) for e in images)      # the columns apart: zlib finds the repeats
    body += _front_code([e.name for e in images])
    body += b"".join(e.check.to_bytes(2, "little") for e in images)
    packed = zlib.compress(bytes(body), 9)
    head = MAGIC + bytes([VERSION]) + len(packed).to_bytes(4, "little") + packed
    return head + zlib.crc32(head).to_bytes(4, "little")


def read_index(data: bytes) -> ArchiveIndex:
    """The index of an archive (names, sizes, chunks), checked; nothing is decoded. One-line
    :class:`ArchiveError` for foreign bytes, another version, or a damaged or truncated index."""
    if len(data) < len(MAGIC) or data[:len(MAGIC)] != MAGIC:
        raise ArchiveError("not a ddpm-codec archive (wrong magic number)")
    if len(data) < _FIXED:
        raise ArchiveError("the archive ends inside its index: truncated")
    version = data[len(MAGIC)]
    if version not in _VERSIONS:
        raise ArchiveError(f"archive format version {version} is not supported (this reader: "
                           f"{', '.join(map(str, _VERSIONS))})")
    n = int.from_bytes(data[len(MAGIC) + 1:_FIXED], "little")
    end = _FIXED + n
    if len(data) < end + _CRC:
        raise ArchiveError("the archive ends inside its index: truncated")
    if zlib.crc32(data[:end]) != int.from_bytes(data[end:end + _CRC], "little"):
        raise ArchiveError("the archive's index fails its checksum: damaged (no image can be located)")
    try:
        body = zlib.decompress(data[_FIXED:end])
        return _parse_index(body, end + _CRC, version)
    except (zlib.error, container.DdpmFormatError, IndexError, ValueError, UnicodeDecodeError) as e:
        raise ArchiveError(f"the archive's index is inconsistent: {e}") from None


def _parse_index(body: bytes, start: int, version: int) -> ArchiveIndex:
    pos = 4
    fingerprint = body[:4]

    def uv(name: str, lo: int, hi: int) -> int:
        nonlocal pos
        val, pos = container.varint_decode(body, pos, name=name)
        if not lo <= val <= hi:
            raise ValueError(f"{name} {val} is outside {lo}..{hi}")
        return val

    def fixed(nbytes: int) -> int:
        nonlocal pos
        if pos + nbytes > len(body):
            raise ValueError("the index ends early")
        pos += nbytes
        return int.from_bytes(body[pos - nbytes:pos], "little")

    num_steps = uv("num_steps", 1, 1 << 16)
    spacing, grid_bits, seed_images = fixed(1), fixed(1), fixed(1)
    if spacing >= len(SCHEDULE_KINDS):
        raise ValueError(f"unknown spacing id {spacing}")
    t_end = uv("t_end", 1, 1 << 16)
    chunk_images = uv("chunk_images", 1, 1 << 20)
    settings = ArchiveSettings(num_steps, SCHEDULE_KINDS[spacing], grid_bits, chunk_images, seed_images)
    num_images = uv("number of images", 0, 1 << 32)
    num_chunks = uv("number of chunks", 0, 1 << 32)
    if num_chunks != -(-num_images // chunk_images):
        raise ValueError(f"{num_chunks} chunks for {num_images} images of {chunk_images} a chunk")
    chunks, offset = [], start
    for c in range(num_chunks):
        length = uv("chunk length", 8, 1 << 48)
        crc = fixed(4)
        pix = fixed(4) if version >= 2 else None
        size = min(chunk_images, num_images - c * chunk_images)
        seeds = [uv("seed file length", 1, length) for _ in range(uv("seed files", 0, min(size, seed_images)))]
        chunks.append(ChunkEntry(size, offset, length, crc, seeds, pix))
        offset += length
    images = []
    if version == 1:            # each image's height, width, CRC-32, name length, name
        for _ in range(num_images):
            h, w = uv("height", 1, container.MAX_DIM), uv("width", 1, container.MAX_DIM)
            crc = fixed(4)
            ln = uv("name length", 1, 4096)
            name = body[pos:pos + ln].decode("utf-8")
            pos += ln
            images.append(ImageEntry(_check_name(name), h, w, crc))
    else:                       # all sizes, all names (front-coded), all CRC-16s
        sizes = [(uv("height", 1, container.MAX_DIM), uv("width", 1, container.MAX_DIM)) for _ in range(num_images)]
        prev = b""
        for h, w in sizes:
            keep = uv("shared name prefix", 0, len(prev))
            ln = uv("name length", 1 if keep == 0 else 0, 4096 - keep)
            prev = prev[:keep] + body[pos:pos + ln]
            pos += ln
            images.append(ImageEntry(_check_name(prev.decode("utf-8")), h, w, 0))
        for e in images:
            e.check = fixed(2)
    if pos != len(body):
        raise ValueError("trailing bytes in the index")
    return ArchiveIndex(fingerprint, settings, t_end, images, chunks, start, version)


# ----------------------------------------------------------------------------- archive / extract

def _seed_file(img: np.ndarray, model: LoadedModel, profile: CodecSettings, name: str) -> tuple[ImageStats, bytes]:
    """A chunk's seed image as a lossless per-image file, and its stats (it costs its file)."""
    from .api import encode

    res = encode(img, model, settings=profile, metrics=False)
    kl = res.steps[-1].cum_kl_bpd * res.num_dims if res.steps else 0.0
    bits = 8.0 * len(res.data)
    return ImageStats(name=name, dims=res.num_dims, stack_bits=bits, virtual_bits=0.0, push_bits=bits, pop_bits=0.0,
                      x0_bits=res.x0_ideal_bits, kl_bits=kl, network_seconds=res.network_seconds,
                      seconds=res.seconds), res.data


def archive(images: Iterable[tuple[str, np.ndarray]], model: LoadedModel, *,
            settings: ArchiveSettings | None = None, measure: bool = False,
            progress: Callable[[ImageStats], None] | None = None, max_pixels: int | None = None,
            seed_profile: CodecSettings | None = None) -> ArchiveResult:
    """Code named uint8 RGB images ``(name, [H, W, 3])`` into one archive (bytes). ``measure``:
    fill :class:`ImageStats`' ideal bits and KLs (float reports, a little slower). Each chunk's
    first ``settings.seed_images`` images are coded by :func:`.api.encode` with ``seed_profile``
    (default: profile 13, exact arithmetic; the files name their settings) and put at the bottom of
    the chunk's stack, where the next images' pops read them as their initial bits."""
    settings = settings or ArchiveSettings()
    coder = ChunkCoder(model, settings, seed_profile)
    items = []
    for name, img in images:
        items.append((_check_name(name), check_image(img, max_pixels)))
    names = [n for n, _ in items]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise InputError(f"two images are named {dup!r}: names must be unique")
    start = time.perf_counter()
    stats, chunks = [], []
    k = settings.chunk_images
    for c in range(0, -(-len(items) // k)):
        chunk, s = coder.encode(c, items[c * k:(c + 1) * k], measure=measure, progress=progress)
        chunks.append(chunk)
        stats += s
    entries = [ImageEntry(name, img.shape[0], img.shape[1], image_check(img)) for name, img in items]
    index = coder.index(entries, chunks)
    data = index + b"".join(ch.payload for ch in chunks)
    return ArchiveResult(data=data, stats=stats, seconds=time.perf_counter() - start,
                         network_seconds=coder.net.seconds, index_bytes=len(index))


class ChunkCoder:
    """Codes the chunks of an archive one by one (independent stacks: any subset, in any order or
    process, gives the same payloads as :func:`archive`), and their index."""

    def __init__(self, model: LoadedModel, settings: ArchiveSettings, seed_profile: CodecSettings | None = None):
        self.model, self.settings = model, settings
        self.seed_profile = seed_profile or PROFILES[13]
        if settings.seed_images and not self.seed_profile.exact:
            raise InputError("the seed images' profile must be exact (portable), as the archive is")
        self.fingerprint = _fingerprint(model)
        self.chain = BitsBackChain(model, settings, model.x0_context.config.tau)
        self.net = Net(model, EXACT)
        self.ctx = _context(model, self.net)

    def encode(self, c: int, items: list[tuple[str, np.ndarray]], *, measure: bool = False,
               progress: Callable[[ImageStats], None] | None = None) -> tuple[PackedChunk, list[ImageStats]]:
        """Chunk ``c`` of checked, named images: its first ``seed_images`` as per-image files at the
        bottom of stack ``c``, the others bits-back on top."""
        files, stats = [], []
        stack = None
        for i, (name, img) in enumerate(items):
            if i < self.settings.seed_images:
                s, data = _seed_file(img, self.model, self.seed_profile, name)
                files.append(data)
                self.net.seconds += s.network_seconds      # the per-image codec's network time counts too
            else:
                if stack is None:
                    stack = AnsStack(seed=c, bottom=b"".join(files))
                s = encode_image(stack, self.chain, self.net, self.ctx, img, name, measure=measure)
            stats.append(s)
            if progress:
                progress(s)
        if stack is None:
            stack = AnsStack(seed=c, bottom=b"".join(files))
        return PackedChunk([len(f) for f in files], stack.to_bytes(), pixels_crc(img for _, img in items)), stats

    def index(self, entries: list[ImageEntry], chunks: list[PackedChunk]) -> bytes:
        return _pack_index(self.fingerprint, self.settings, self.chain.tau, entries, chunks)


def check_model(index: ArchiveIndex, model: LoadedModel) -> None:
    """Refuse (:class:`ArchiveError`) a model that is not the one the archive names."""
    have = model.context_fingerprint or model.fingerprint
    if not have.startswith(index.fingerprint.hex()):
        raise ArchiveError(f"the archive was made with model {index.fingerprint.hex()}, but the model given is "
                           f"{model.name} ({have[:8]}): extract with the same model (--model)")


def extract(data: bytes, model: LoadedModel, *, only: Iterable[str] | None = None,
            progress: Callable[[str], None] | None = None, max_pixels: int | None = None) -> ExtractResult:
    """Decode an archive's images (all, or the names in ``only``: their chunks only, each from its
    last image down to the wanted one). A chunk that is missing, fails its checksum or does not
    decode is reported in :attr:`ExtractResult.damaged` with the names it held; the others extract."""
    index = read_index(data)
    check_model(index, model)
    for e in index.images:
        check_dimensions(e.height, e.width, max_pixels)
    want = None
    if only is not None:
        want = set(only)
        missing = sorted(want - {e.name for e in index.images})
        if missing:
            raise InputError(f"the archive holds no image named {missing[0]!r}")
    chain = BitsBackChain(model, index.settings, index.t_end)
    net = Net(model, EXACT)
    ctx = _context(model, net)
    start = time.perf_counter()
    k = index.settings.chunk_images
    out: dict[int, np.ndarray] = {}
    damaged = []
    for c, ch in enumerate(index.chunks):
        members = list(range(c * k, c * k + ch.num_images))
        wanted = [i for i in members if want is None or index.images[i].name in want]
        if not wanted:
            continue
        names = [index.images[i].name for i in members]
        payload = data[ch.offset:ch.offset + ch.length]
        if len(payload) < ch.length:
            damaged.append(DamagedChunk(c, names, "truncated: the archive ends before this chunk's end"))
            continue
        if zlib.crc32(payload) != ch.crc:
            damaged.append(DamagedChunk(c, names, "fails its checksum"))
            continue
        got, reason = _extract_chunk(payload, c, members, min(wanted), index, chain, net, ctx, progress)
        if reason:
            damaged.append(DamagedChunk(c, names, reason))
            continue
        out.update(got)
    images = [(index.images[i].name, out[i]) for i in sorted(out) if want is None or index.images[i].name in want]
    return ExtractResult(images=images, damaged=damaged, seconds=time.perf_counter() - start,
                         network_seconds=net.seconds)


def _extract_chunk(payload, c, members, first, index, chain, net, ctx, progress):
    """Chunk ``c``'s images from its last down to ``first``; the seed files (the stack's bottom) once every
    bits-back image above them is undone. Each image must match its check; a whole chunk must also end
    on the encoder's initial stack and (version 2) match the chunk's pixel CRC-32. Returns ({image index:
    pixels}, None) or ({}, why it failed)."""
    from .api import decode

    seeds = index.chunks[c].seed_files
    whole = first == members[0]
    try:
        stack = AnsStack.from_bytes(payload, seed=c)
        got = {}
        for i in reversed(members[len(seeds):]):
            if i < first:
                break
            e = index.images[i]
            got[i] = _checked(decode_image(stack, chain, net, ctx, e.height, e.width), e, index.version)
            if progress:
                progress(e.name)
        if not whole and first >= members[0] + len(seeds):
            return got, None
        bottom = stack.release_bottom(sum(seeds))
        if bottom is None:
            return {}, "the stack does not end where its encoder began"
        pos = 0
        for i, n in zip(members, seeds):
            if i >= first:
                res = decode(bottom[pos:pos + n], chain.model)
                net.seconds += res.network_seconds
                got[i] = _checked(res.image, index.images[i], index.version)
                if progress:
                    progress(index.images[i].name)
            pos += n
        want = index.chunks[c].pixels_crc
        if whole and want is not None and pixels_crc(got[i] for i in members) != want:
            return {}, "its images fail the chunk's checksum"
        return got, None
    except _ChecksumError as exc:
        return {}, str(exc)
    except (AnsError, ValueError) as exc:
        return {}, f"does not decode ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"


class _ChecksumError(Exception):
    pass


def _checked(img: np.ndarray, e: ImageEntry, version: int) -> np.ndarray:
    if img.shape[:2] != (e.height, e.width) or image_check(img, version) != e.check:
        raise _ChecksumError(f"image {e.name!r} fails its checksum")
    return img


# ----------------------------------------------------------------------------- inputs

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".jxl")


def collect_images(inputs: Iterable[str | Path], *, split: str = "test", max_pixels: int | None = None,
                   notes: list[str] | None = None) -> list[tuple[str, np.ndarray]]:
    """Named images from files, folders (their images, sorted, named by their path inside the folder)
    and ``.npz`` files (the array ``<split>_images``, named ``<stem>/<index>``). One-line errors."""
    from ..data import load_npz
    from ..imageio import read_image

    out: list[tuple[str, np.ndarray]] = []
    for spec in inputs:
        p = Path(spec)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise InputError(f"folder {p} holds no images")
            for f in files:
                img, n = read_image(f, max_pixels=max_pixels)
                out.append((f.relative_to(p).as_posix(), img))
                if notes is not None:
                    notes.extend(f"{f}: {x}" for x in n)
        elif p.suffix.lower() == ".npz":
            arr = load_npz(p, split)
            width = len(str(max(len(arr) - 1, 0)))
            out.extend((f"{p.stem}/{i:0{width}d}", check_image(a, max_pixels)) for i, a in enumerate(arr))
        else:
            img, n = read_image(p, max_pixels=max_pixels)
            out.append((p.name, img))
            if notes is not None:
                notes.extend(f"{p}: {x}" for x in n)
    return out


def output_name(name: str) -> str:
    """The file an extracted image is written to (relative): its name, as a PNG."""
    p = PurePosixPath(name)
    return str(p.with_suffix(".png")) if p.suffix.lower() in IMAGE_SUFFIXES else name + ".png"
