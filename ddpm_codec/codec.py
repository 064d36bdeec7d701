"""Progressive coding with a DDPM: Algorithms 3 and 4 of Ho et al. (2020) with real bits.

The sender transmits x_T, x_{t_2}, ..., x_tau along a (strided) chain by reverse channel coding
(``coding.rcc``): each x_s ~ q(x_s | x_t, x_0) is sent using p_theta(x_s | x_t). Then x_0 is
entropy-coded exactly with the discretized Gaussian p(x_0 | x_tau) (Eq. 13; ``coding.entropy``).
The receiver can stop after any step and show x_hat_0 (Eq. 15), a sample, or a deterministic
probability-flow decode. Both sides compute every network output with the same batch layout and
a fixed thread count, so the decoder reproduces the encoder's floats bit for bit on the same
hardware; a pixel checksum turns any divergence into a clear error.
"""
from __future__ import annotations

import contextlib
import math
import time
import warnings
import zlib
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, Literal

import numpy as np
import torch

from .coding import container, entropy, rcc
from .data import to_uint8
from .diffusion import GaussianDiffusion, respaced_timesteps
from .models.checkpoint import LoadedModel

Reconstruct = Literal["denoise", "ancestral", "flow"]
RECONSTRUCT_MODES = ("denoise", "ancestral", "flow")
SCHEDULE_KINDS = ("quadratic", "uniform", "cubic")   # file ids: append only
VARIANCE_IDS = ("fixedsmall", "fitted", "fixedlarge")
SELECTION_IDS = ("pfr", "mrc", "trellis")
# count models (bits 4-5 of an explicit schedule's selection byte; bits 0-3: the selection, bits 6-7:
# the trellis's reuse_bits): the mass the chunk-count model puts on the decoder's prediction
# (coding.rcc._chunk_count_probs); ids append only
COUNT_SPIKES = {0: 0.0, 1: 0.8}
TRELLIS_COUNT_SCALE = (0.6, 0.03)   # (abs, rel) deviation of the chunk-count model; part of the format
SEGMENT_GROWTH = 2.5   # each segment at least this many times the previous one (encoder policy; 1.5 until
                       # profile 5: 4.75 segments per lossless CIFAR image, 2.5 gives 3.4 and 3.1 bytes less)
CODEC_THREADS = 1   # network evaluations run single-threaded: thread count changes float sums
# Per-tile scale of the x_0 decoder (CodecSettings.x0_scale_bits = 4): tile b codes x_0 with the
# decoder's scale times X0_SCALE_FACTORS[i_b], i_b sent in 4 raw bits. The factors are 2^((i - 10)/16)
# written out (not computed: libm's pow may differ in the last bit between machines; the decoder
# must build the identical scales). Part of the format: never change.
X0_SCALE_FACTORS = (0.6484197773255048, 0.6771277734684463, 0.7071067811865476, 0.7384130729697497,
                    0.7711054127039704, 0.8052451659746271, 0.8408964152537145, 0.8781260801866497,
                    0.9170040432046712, 0.9576032806985737, 1.0, 1.0442737824274138, 1.0905077326652577,
                    1.1387886347566916, 1.189207115002721, 1.241857812073484)
# Cross-channel x_0 prediction (CodecSettings.x0_channel_bits = 3): channels are coded R, G, B; the
# mean of G is x_hat_0's plus a_GR times R's residual (x_0 - x_hat_0 at the decoded R), B's adds
# a_BR·r_R + a_BG·r_G; each tile's three coefficients are indices into this table (3 raw bits each).
# Exact binary fractions, part of the format.
X0_CHANNEL_COEFS = (-0.0625, 0.0, 0.0625, 0.125, 0.1875, 0.25, 0.3125, 0.375)


class DecodeError(ValueError):
    """A file cannot be decoded with this model (fingerprint or checksum mismatch)."""


@dataclass(frozen=True)
class CodecSettings:
    """How an image is coded. Everything here is written to the file (as a profile id or explicitly)."""

    num_steps: int = 64                     # Gaussian coding steps T = t_1 > ... > t_S = t_end
    t_end: int = 4                          # tau: x_0 is coded from x_tau
    schedule_kind: str = "quadratic"        # spacing of the chain (dense near tau)
    chunk_bits: int = 10                    # PFR: KL per chunk; trellis: path bits per segment
    log2_candidates: int = 14               # pool rows (trellis: state bits + chunk_bits)
    variance: str = "fitted"                # p_theta's variance on the coding steps
    selection: str = "pfr"                  # the reverse channel coder (coding.rcc)
    rate_percent: int = 100                 # bits sent per 100 bits of KL (trellis)
    count_model: int = 0                    # chunk counts: 0 geometric; 1 with 80 % at the prediction
    reuse_bits: int = 0                     # trellis: 2^reuse_bits x the states on the same pool (coding.rcc)
    x0_scale_bits: int = 0                  # 4: each tile's x_0 decoder scale x X0_SCALE_FACTORS[i], i sent
    x0_channel_bits: int = 0                # 3: x_0's G and B means predicted from decoded R (G) residuals
    x0_neighbours: int = 0                  # 1: and every channel's from the residuals above and to the left

    def __post_init__(self):
        if self.schedule_kind not in SCHEDULE_KINDS:
            raise ValueError(f"unknown schedule kind {self.schedule_kind!r}; expected one of {SCHEDULE_KINDS}")
        if self.variance not in VARIANCE_IDS:
            raise ValueError(f"unknown variance {self.variance!r}; expected one of {VARIANCE_IDS}")
        if not 1 <= self.chunk_bits <= 24 or not 1 <= self.log2_candidates <= 24:
            raise ValueError("chunk_bits and log2_candidates must be in [1, 24]")
        if self.selection not in SELECTION_IDS:
            raise ValueError(f"unknown selection {self.selection!r}; expected one of {SELECTION_IDS}")
        if self.count_model not in COUNT_SPIKES:
            raise ValueError(f"unknown count model {self.count_model}; expected one of {sorted(COUNT_SPIKES)}")
        if not 0 <= self.reuse_bits <= 8:
            raise ValueError(f"reuse_bits must be in [0, 8], got {self.reuse_bits}")
        if self.x0_scale_bits not in (0, 4):
            raise ValueError(f"x0_scale_bits must be 0 or 4, got {self.x0_scale_bits}")
        if self.x0_channel_bits not in (0, 3):
            raise ValueError(f"x0_channel_bits must be 0 or 3, got {self.x0_channel_bits}")
        if self.x0_neighbours not in (0, 1) or (self.x0_neighbours and not self.x0_channel_bits):
            raise ValueError(f"x0_neighbours must be 0 or 1, and 1 only with x0_channel_bits, got {self.x0_neighbours}")
        if not 25 <= self.rate_percent <= 255:
            raise ValueError(f"rate_percent must be in [25, 255], got {self.rate_percent}")
        self.rcc_config()  # validates the combination (e.g. trellis state bits)

    def timesteps(self, num_timesteps: int) -> list[int]:
        return respaced_timesteps(self.num_steps, num_timesteps, kind=self.schedule_kind, t_end=self.t_end)

    def rcc_config(self) -> "rcc.RCCConfig":
        if self.selection == "trellis":  # counts predicted per tile to about ±1 (_CountPredictor)
            return rcc.RCCConfig(chunk_bits=self.chunk_bits, log2_candidates=self.log2_candidates,
                                 selection=self.selection, rate_factor=self.rate_percent / 100,
                                 chunks_abs_scale=TRELLIS_COUNT_SCALE[0], chunks_rel_scale=TRELLIS_COUNT_SCALE[1],
                                 count_spike=COUNT_SPIKES[self.count_model], reuse_bits=self.reuse_bits)
        return rcc.RCCConfig(chunk_bits=self.chunk_bits, log2_candidates=self.log2_candidates,
                             selection=self.selection, rate_factor=self.rate_percent / 100,
                             count_spike=COUNT_SPIKES[self.count_model], reuse_bits=self.reuse_bits)

    def to_schedule(self) -> container.Schedule:
        return container.Schedule(kind=SCHEDULE_KINDS.index(self.schedule_kind), num_steps=self.num_steps,
                                  t_end=self.t_end, chunk_bits=self.chunk_bits,
                                  log2_candidates=self.log2_candidates,
                                  variance_kind=VARIANCE_IDS.index(self.variance) | (self.x0_scale_bits << 4)
                                  | (0x80 if self.x0_channel_bits else 0) | (0x20 if self.x0_neighbours else 0),
                                  selection=SELECTION_IDS.index(self.selection) | (self.reuse_bits >> 2 << 2)
                                  | (self.count_model << 4) | ((self.reuse_bits & 3) << 6),
                                  rate_percent=self.rate_percent)

    @classmethod
    def from_schedule(cls, s: container.Schedule) -> "CodecSettings":
        # selection byte: bits 0-1 coder, 4-5 count model, 6-7 and 2-3 the low and high bits of reuse_bits
        sel, count_model = s.selection & 0x3, (s.selection >> 4) & 0x3
        reuse_bits = (s.selection >> 6) | (((s.selection >> 2) & 0x3) << 2)
        # variance byte: bits 0-3 the variance kind, 6 x0_scale_bits 4, 7 cross-channel x0 coefficients
        # (3 bits each), 5 neighbour coefficients too; bit 4 unused (refused)
        variance, x0_scale_bits = s.variance_kind & 0x0F, (s.variance_kind >> 4) & 0x5
        x0_channel_bits = 3 if s.variance_kind & 0x80 else 0
        x0_neighbours = 1 if s.variance_kind & 0x20 else 0
        if s.kind >= len(SCHEDULE_KINDS) or variance >= len(VARIANCE_IDS) or sel >= len(SELECTION_IDS) \
                or count_model not in COUNT_SPIKES:
            raise container.CorruptFileError("file names an unknown schedule, variance, coder or count model")
        try:
            return cls(num_steps=s.num_steps, t_end=s.t_end, schedule_kind=SCHEDULE_KINDS[s.kind],
                       chunk_bits=s.chunk_bits, log2_candidates=s.log2_candidates,
                       variance=VARIANCE_IDS[variance], selection=SELECTION_IDS[sel],
                       rate_percent=s.rate_percent, count_model=count_model, reuse_bits=reuse_bits,
                       x0_scale_bits=x0_scale_bits, x0_channel_bits=x0_channel_bits, x0_neighbours=x0_neighbours)
        except ValueError as exc:
            raise container.CorruptFileError(f"file names impossible coding settings: {exc}") from exc


# Built-in settings, referenced from files by one byte. Never renumber or change: append.
PROFILES: dict[int, CodecSettings] = {
    1: CodecSettings(num_steps=64, t_end=2, chunk_bits=12, log2_candidates=13),
    # measured on 6 CIFAR-10 test images with cifar10-cpu-small (benchmarks/codec.py): 2.1% smaller
    # lossless files than profile 1 (5.266 vs 5.378 bits/dim) at about the same encode time
    2: CodecSettings(num_steps=64, t_end=4, chunk_bits=10, log2_candidates=14),
    # trellis coder (coding.rcc): Viterbi over 2^10 states, 4 path bits per segment, 1.05 bits sent
    # per bit of KL; 48 cubic steps down to t = 1. Chosen on CIFAR-10 test images 0-11 with
    # cifar10-cpu-small (lossless bits/dim): profile 2 5.05; trellis 64 quadratic steps to tau 4
    # 4.63, tau 2 4.57, tau 1 4.54; cubic tau 1: 64 steps 4.52, 48 4.51, 40 4.52, 32 4.55; rate
    # 105/110/115 % within 0.005 of each other (0-23: 105 vs 110: -0.003 +- 0.005, without headers),
    # 100 % +0.03 (docs/results/codec-benchmark.md).
    3: CodecSettings(num_steps=48, t_end=1, schedule_kind="cubic", chunk_bits=4, log2_candidates=14,
                     selection="trellis", rate_percent=105),
    # profile 3 with a 4x larger pool (2^12 states): 0.026 +- 0.006 bits/dim smaller files at 2.2x
    # the encode time on this CPU and 1.6 GB of pool tables (benchmarks/profiles.py -n 24 3 4; for
    # GPUs or patient encoders; decoding costs the same: it regenerates only the chosen candidates)
    4: CodecSettings(num_steps=48, t_end=1, schedule_kind="cubic", chunk_bits=4, log2_candidates=16,
                     selection="trellis", rate_percent=105),
    # profile 3 with count model 1: the encoder sends the decoder's predicted chunk count whenever
    # its own is within -4 % / +12 % (at least +-2) of it, at 0.32 bits instead of ~2.5 a step.
    # CIFAR-10 test 0-23, cifar10-cpu-small e776e0ed: count bits 118 -> 63 per image, files
    # -52.7 +- 15.8 bits per image (-0.017 bits/dim) against profile 3.
    5: CodecSettings(num_steps=48, t_end=1, schedule_kind="cubic", chunk_bits=4, log2_candidates=14,
                     selection="trellis", rate_percent=105, count_model=1),
    # profile 5 with 8x the trellis states (2^13) on the same 2^14-row pool (coding.rcc, reuse_bits):
    # the Viterbi recursion costs 8x, the pool pass (and memory) the same. CIFAR-10 test 0-23:
    # reuse 2 -74.0 +- 17.8 bits/image against 0 at 1.12x the encode time; reuse 3 a further
    # -31.0 +- 17.7 at 1.12x (toy chain of benchmarks/rcc.py, excess/KL: 9.3 % -> 7.8 %, 7.1 %;
    # reuse 4 and 5: 6.7 % and 6.3 % at ~1.6x and ~3x the RCC time; in the codec, reuse 4 vs 3 on
    # test 0-15: -19 +- 21 bits/image at 1.20x). Rate 100 % and 110 % with it, test 0-15, files
    # without header: +0.008 and +0.004 bits/dim against 105 %.
    6: CodecSettings(num_steps=48, t_end=1, schedule_kind="cubic", chunk_bits=4, log2_candidates=14,
                     selection="trellis", rate_percent=105, count_model=1, reuse_bits=3),
    # profile 6 with 2^17 trellis states (reuse_bits 7; the compiled recursion of coding.viterbi makes
    # them affordable) and a per-tile x_0 decoder scale (x0_scale_bits 4: X0_SCALE_FACTORS[i], i in 4 raw
    # bits). CIFAR-10 test 0-23, file bodies against profile 6: reuse 5 / 6 / 7: -73 +- 16 / -78 +- 17 /
    # -100 +- 17 bits per image at 1.08x / 1.24x / 1.59x the encode time; with reuse 7 on test 24-47,
    # rate 102 % +35 +- 14 and 108 % -9 +- 14 bits against 105 %; reuse 8: -8 +- 18 at 1.37x. Codec
    # benchmark (test 0-19): 4.3542 bits/dim, 1.0530 x NELBO (profile 6: 4.3945); x_0 6488 -> 6411 bits.
    7: CodecSettings(num_steps=48, t_end=1, schedule_kind="cubic", chunk_bits=4, log2_candidates=14,
                     selection="trellis", rate_percent=105, count_model=1, reuse_bits=7, x0_scale_bits=4),
    # profile 7 with cross-channel x_0 prediction (x0_channel_bits 3: G's mean shifted by a_GR times R's
    # residual, B's by a_BR, a_BG times R's and G's; per-tile coefficients from X0_CHANNEL_COEFS).
    # Codec benchmark (test 0-19): 4.3271 bits/dim, 1.0465 x NELBO; x_0 6411 -> 6328 bits; encode 3.2 s.
    8: CodecSettings(num_steps=48, t_end=1, schedule_kind="cubic", chunk_bits=4, log2_candidates=14,
                     selection="trellis", rate_percent=105, count_model=1, reuse_bits=7, x0_scale_bits=4,
                     x0_channel_bits=3),
    # profile 8 with neighbour terms in x_0's means (x0_neighbours 1: each channel's mean also moves by
    # the residuals of R, G, B above and to the left, 18 more 3-bit coefficients per tile; pixels are
    # then decoded one position at a time, all tiles together). Codec benchmark (test 0-19): 4.2729 bits/dim,
    # 1.0334 x NELBO; x_0 6328 -> 6163 bits; encode 3.3 s, decode 0.95 s.
    9: CodecSettings(num_steps=48, t_end=1, schedule_kind="cubic", chunk_bits=4, log2_candidates=14,
                     selection="trellis", rate_percent=105, count_model=1, reuse_bits=7, x0_scale_bits=4,
                     x0_channel_bits=3, x0_neighbours=1),
}
DEFAULT_PROFILE = 9


def default_settings() -> CodecSettings:
    return PROFILES[DEFAULT_PROFILE]


def settings_with(profile: int = DEFAULT_PROFILE, **overrides) -> CodecSettings:
    """A profile's settings with the non-None ``overrides`` applied (validated). Another coder than
    the trellis drops the profile's ``reuse_bits`` (trellis states) unless given."""
    over = {k: v for k, v in overrides.items() if v is not None}
    if over.get("selection", "trellis") != "trellis":
        over.setdefault("reuse_bits", 0)
    return replace(PROFILES[profile], **over)


def _profile_of(settings: CodecSettings) -> int | None:
    for pid, s in PROFILES.items():
        if s == settings:
            return pid
    return None


# ----------------------------------------------------------------------------- tiles
def to_tiles(image: np.ndarray, size: int) -> torch.Tensor:
    """uint8 [H, W, 3] -> float32 tiles [B, 3, size, size] in [-1, 1], edge-padded, raster order."""
    h, w, _ = image.shape
    ph, pw = -h % size, -w % size
    padded = np.pad(image, ((0, ph), (0, pw), (0, 0)), mode="edge")
    H, W = padded.shape[:2]
    tiles = padded.reshape(H // size, size, W // size, size, 3).transpose(0, 2, 4, 1, 3).reshape(-1, 3, size, size)
    return torch.from_numpy(np.ascontiguousarray(tiles)).float() / 127.5 - 1.0


def from_tiles(tiles_uint8: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 tiles [B, size, size, 3] -> uint8 [height, width, 3] (crop of the padded mosaic)."""
    size = tiles_uint8.shape[1]
    gh, gw = -(-height // size), -(-width // size)
    mosaic = tiles_uint8.reshape(gh, gw, size, size, 3).transpose(0, 2, 1, 3, 4).reshape(gh * size, gw * size, 3)
    return np.ascontiguousarray(mosaic[:height, :width])


def _inside_mask(height: int, width: int, size: int) -> np.ndarray:
    """Boolean [B, 3, size, size]: which tile pixels lie inside the image (the ones coded losslessly)."""
    gh, gw = -(-height // size), -(-width // size)
    yy = (np.arange(gh)[:, None, None, None] * size + np.arange(size)[None, None, :, None])
    xx = (np.arange(gw)[None, :, None, None] * size + np.arange(size)[None, None, None, :])
    inside = (yy < height) & (xx < width)                      # [gh, gw, size, size]
    inside = np.broadcast_to(inside[:, :, None], (gh, gw, 3, size, size))
    return inside.reshape(-1, 3, size, size)


def check_image(image: np.ndarray) -> np.ndarray:
    """Accept uint8 RGB [H, W, 3]; convert gray/RGBA/16-bit with clear rules or refuse."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {arr.shape}")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    if arr.shape[2] == 4:
        if np.any(arr[:, :, 3] != arr.dtype.type(np.iinfo(arr.dtype).max if arr.dtype.kind == "u" else 1)):
            raise ValueError("the image has transparency (alpha < opaque): ddpm-codec codes RGB only; flatten it first")
        arr = arr[:, :, :3]
    if arr.dtype != np.uint8:
        raise ValueError(f"expected 8-bit pixels, got {arr.dtype}: convert 16-bit/float images to 8-bit first")
    if arr.shape[0] < 1 or arr.shape[1] < 1 or arr.shape[0] > 65535 or arr.shape[1] > 65535:
        raise ValueError(f"image size {arr.shape[1]}x{arr.shape[0]} is outside 1..65535")
    return np.ascontiguousarray(arr)


# ----------------------------------------------------------------------------- reports
@dataclass
class StepRecord:
    """One row of the progressive report (the paper's Table 4 with real bits)."""

    reverse_time: int        # T - t + 1 for the x_t reached
    t: int
    kl_bits: float           # KL(q || p) of this step, summed over tiles
    actual_bits: float       # bits this step added to the file (coder's count)
    cum_kl_bpd: float        # cumulative KL bound (incl. L_T), bits/dim
    cum_bpd: float           # cumulative actual bits/dim (header + segments so far)
    rmse: float              # of x_hat_0 from x_t, 0-255
    psnr: float
    chunks: int


@dataclass
class EncodeResult:
    data: bytes
    steps: list[StepRecord]
    lossless: bool
    x0_bits: float = 0.0            # actual bits of the x_0 segment
    x0_ideal_bits: float = 0.0      # -log2 p(x_0 | x_tau)
    seconds: float = 0.0
    network_seconds: float = 0.0
    num_dims: int = 0

    @property
    def bits_per_dim(self) -> float:
        return 8 * len(self.data) / self.num_dims

    @property
    def kl_bound_bpd(self) -> float:
        """The ideal size of this file: sum of KLs + -log2 p(x_0 | x_tau), per dim."""
        kl = self.steps[-1].cum_kl_bpd if self.steps else 0.0
        return kl + self.x0_ideal_bits / self.num_dims


def _metrics(x0_hat: torch.Tensor, ref_uint8: np.ndarray, height: int, width: int) -> tuple[float, float]:
    img = from_tiles(to_uint8(x0_hat), height, width).astype(np.float64)
    mse = float(np.mean((img - ref_uint8.astype(np.float64)) ** 2))
    return math.sqrt(mse), (float("inf") if mse == 0 else 10 * math.log10(255.0 ** 2 / mse))


@contextlib.contextmanager
def _deterministic_settings():
    """Settings under which both sides compute the same floats: one CPU thread (the thread count
    changes float sums); on CUDA only cuDNN kernels marked deterministic, and no TF32 (measured on
    an H200: CUDA ε̂ within 2.6e-6 of the CPU's instead of 6.7e-4). Whether that suffices on a GPU
    is open: see docs/results/gpu-2026-11-26.md."""
    old = torch.get_num_threads()
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    flags = (cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32)
    torch.set_num_threads(CODEC_THREADS)
    cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = True, False, False, False
    try:
        yield
    finally:
        torch.set_num_threads(old)
        cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = flags


ACCELERATOR_WARNING = (
    "the network runs on {device}: a file encoded there decodes only where the network's outputs are "
    "bit-identical, and in our one test (an H200, 2026-11-26) a GPU-encoded file failed its checksum "
    "when decoded in a second process on the same GPU. Files encoded on a CPU decoded bit-exactly on "
    "another x86 CPU (AVX2 -> AVX-512). Encode files you keep on the CPU (the CLI's default); "
    "benchmarks/determinism.py shows where two runs differ.")


def _warn_if_accelerated(model: LoadedModel) -> None:
    if model.device.type != "cpu":
        warnings.warn(ACCELERATOR_WARNING.format(device=model.device), RuntimeWarning, stacklevel=3)


class _Net:
    """The network as both sides call it: one batch of all tiles, float32, timed."""

    def __init__(self, model: LoadedModel):
        self.model = model
        self.seconds = 0.0

    def __call__(self, x: torch.Tensor, t: int) -> torch.Tensor:
        t0 = time.perf_counter()
        if torch.get_num_threads() != CODEC_THREADS:  # anything run since (an OpenMP library: a parallel numba
            torch.set_num_threads(CODEC_THREADS)      # search once made undecodable files this way) may reset it
        out = self.model.eps(x.float(), t).double()
        self.seconds += time.perf_counter() - t0
        return out


def _predicted_chunks(diffusion: GaussianDiffusion, t: int, s: int, var_q: float, var_p: float, dims: int,
                      cfg) -> float | None:
    """Expected chunk count of a step from the model's x0_mse statistics (None without them)."""
    if diffusion.x0_mse is None:
        return None
    c0, _, _ = diffusion.posterior_coefs(t, s, torch.zeros(1))
    mean_sq = float(c0) ** 2 * float(diffusion.x0_mse[t])
    kl_nats = 0.5 * dims * (var_q / var_p - 1 - math.log(var_q / var_p)) + 0.5 * dims * mean_sq / var_p
    return rcc.expected_chunks(kl_nats / math.log(2), dims, cfg)


class _CountPredictor:
    """Both sides' prediction of each tile's chunk count ``C`` for the next step.

    PFR/MRC (profiles 1, 2): the model-statistics prediction itself, one value for all tiles.
    Trellis: that prediction times the tile's ratio ``C / prediction`` at its last step with a
    prediction of at least 4 (images keep their relative difficulty along the chain), so that
    ``C`` costs ~1-2 bits a step instead of ~5. Only IEEE basic arithmetic: both sides agree.
    """

    def __init__(self, batch: int, cfg):
        self.adaptive = cfg.selection == "trellis"
        self.ratio = np.ones(batch)

    def centres(self, pred: float | None):
        if pred is None or not self.adaptive:
            return pred
        return pred * self.ratio

    def update(self, pred: float | None, num_chunks: np.ndarray) -> None:
        if pred is None or not self.adaptive or pred < 4.0:
            return
        nc = np.asarray(num_chunks, dtype=np.float64)
        self.ratio = np.where(nc >= 1, nc / pred, self.ratio)


# ----------------------------------------------------------------------------- encode
def encode(image: np.ndarray, model: LoadedModel, *, settings: CodecSettings | None = None,
           max_reverse_time: int | None = None, max_bpd: float | None = None, lossless: bool | None = None,
           seed: int = 0, min_segment_bytes: int = 64, progress: Callable[[StepRecord], None] | None = None,
           metrics: bool = True, x0_in_stream: bool = True) -> EncodeResult:
    """Encode a uint8 RGB image ``[H, W, 3]`` to ``.ddpm`` bytes.

    Lossless (default) codes the whole chain and then x_0 exactly. ``max_reverse_time=N`` stops
    after the coding steps with T - t + 1 <= N (the x-axis of the paper's Table 4), ``max_bpd``
    after the cumulative rate reaches it; either makes the file lossy unless ``lossless=True``.
    ``min_segment_bytes``: all steps form one range-coded stream, cut into segments at step
    boundaries; a segment holds at least this many bytes and 2.5 times the previous one (64: 3-4
    segments in a lossless 32x32 file, at ~64, ~240 and ~700 bytes, each costing only its ~3-byte
    table entry). A file cut at a segment boundary decodes to that segment's last step.
    ``x0_in_stream``: a lossless file codes
    x_0 at the end of that stream (format version 2); False writes version 1 (x_0 as an ANS
    payload of its own: ~5 bytes more, readable by releases before version 2).
    """
    settings = settings or default_settings()
    image = check_image(image)
    _warn_if_accelerated(model)
    height, width = image.shape[:2]
    diffusion = model.diffusion
    T = diffusion.num_timesteps
    size = model.image_size
    x0 = to_tiles(image, size).double()
    B, dims_tile = x0.shape[0], int(np.prod(x0.shape[1:]))
    num_dims = height * width * 3
    if lossless is None:
        lossless = max_reverse_time is None and max_bpd is None
    if settings.variance == "fitted" and diffusion.x0_mse is None:
        raise ValueError("this model has no fitted statistics (x0_mse); use --variance fixedsmall or run calibrate")
    if lossless and (settings.x0_scale_bits or settings.x0_channel_bits) and not x0_in_stream:
        raise ValueError("per-tile x_0 scales or channel coefficients need format version 2 (x0_in_stream=True)")
    ts = settings.timesteps(T)
    cfg = settings.rcc_config()
    net = _Net(model)
    gen = torch.Generator().manual_seed(seed ^ 0x5EED)
    counts = _CountPredictor(B, cfg)
    start = time.perf_counter()

    profile = _profile_of(settings)
    header = container.Header(fingerprint=bytes.fromhex(model.fingerprint[:8]), height=height, width=width, seed=seed,
                              schedule=None if profile is not None else settings.to_schedule(), profile=profile,
                              lossless=lossless, one_stream=True, x0_in_stream=lossless and x0_in_stream)
    header_bytes = len(container.pack(container.DdpmFile(header=replace(header, lossless=False, x0_in_stream=False))))

    stream = _StepStream(B, dims_tile, cfg, min_segment_bytes)
    records: list[StepRecord] = []
    cum_kl = 0.0

    with _deterministic_settings():
        # Step T: x_T ~ q(x_T | x_0) sent using p(x_T) = N(0, I) (L_T; usually free).
        a_T = float(diffusion.sqrt_alphas_cumprod[T])
        mu_q, var_q = a_T * x0, 1.0 - a_T ** 2
        mu_p, var_p = torch.zeros_like(x0), 1.0
        chain = [(T + 1, T)] + list(zip(ts[:-1], ts[1:]))   # (T+1, T) is the prior step
        x = None
        eps_next = None
        for i, (t, s) in enumerate(chain):
            if i > 0:
                eps = eps_next
                p = diffusion.p_mean_variance(x, t, eps, s, settings.variance)
                q = diffusion.q_posterior(x0, x, t, s)
                mu_p, var_p = p.mean, float(p.variance)
                mu_q, var_q = q.mean, float(q.variance)
            pred = None if i == 0 else _predicted_chunks(diffusion, t, s, var_q, var_p, dims_tile, cfg)
            centres = counts.centres(pred)
            code, e, rep = rcc.encode_step(mu_q.reshape(B, -1), mu_p.reshape(B, -1), var_q, var_p, seed=seed,
                                           step=s, cfg=cfg, generator=gen, predicted_chunks=centres)
            before = stream.num_bits()
            stream.write(code, centres)
            counts.update(pred, code.num_chunks)
            step_bits = float(stream.num_bits() - before)
            x = (mu_p + math.sqrt(var_p) * e.double().reshape(x0.shape)).float().double()
            eps_next = net(x, s)
            kl = float(rep.kl_bits.sum())
            cum_kl += kl
            rmse = psnr = float("nan")
            if metrics:
                rmse, psnr = _metrics(diffusion.denoise(x, s, eps_next), image, height, width)
            rec = StepRecord(reverse_time=T - s + 1, t=s, kl_bits=kl, actual_bits=step_bits,
                             cum_kl_bpd=cum_kl / num_dims,
                             cum_bpd=(8.0 * header_bytes + stream.num_bits() + stream.table_bits()) / num_dims,
                             rmse=rmse, psnr=psnr, chunks=int(np.sum(code.num_chunks)))
            records.append(rec)
            if progress:
                progress(rec)
            stream.maybe_end_segment()
            if (max_reverse_time is not None and i + 1 < len(chain) and T - chain[i + 1][1] + 1 > max_reverse_time) \
                    or (max_bpd is not None and rec.cum_bpd >= max_bpd):
                break
        completed_all = len(records) == len(chain)
        x0_payload, crc, x0_bits, x0_ideal = None, None, 0.0, 0.0
        if lossless:
            if not completed_all:
                raise ValueError("a lossless file needs the whole chain: drop max_reverse_time/max_bpd")
            tau = ts[-1]
            means, scales = _x0_model(diffusion, x, tau, eps_next, settings.variance)
            mask = _inside_mask(height, width, size)
            tiles_pix = ((x0 + 1.0) * 127.5).round().to(torch.int64).numpy().astype(np.uint8)
            side = _X0Side.choose(settings, tiles_pix, means, scales, mask)
            eff_means, eff_scales = side.apply(means, scales, tiles_pix, mask)
            pix = tiles_pix[mask]
            x0_ideal = float(entropy.ideal_bits(pix, eff_means[mask], eff_scales[mask]))
            if header.x0_in_stream:
                before = stream.num_bits()
                stream.write_x0(tiles_pix, means, scales, mask, side)
                x0_bits = float(stream.num_bits() - before)
            else:
                x0_payload = entropy.encode_pixels(pix, means[mask], scales[mask])
                x0_bits = 8.0 * len(x0_payload)
            crc = zlib.crc32(image.tobytes())
        segments = stream.segments()
    data = container.pack(container.DdpmFile(header=header, segments=segments, x0=x0_payload, pixel_crc=crc))
    return EncodeResult(data=data, steps=records, lossless=lossless, x0_bits=x0_bits, x0_ideal_bits=x0_ideal,
                        seconds=time.perf_counter() - start, network_seconds=net.seconds, num_dims=num_dims)


class _StepStream:
    """All coding steps in ONE range-coded stream, cut into segments at step boundaries.

    A segment ends after the step where the stream has grown since the last cut by
    ``min_segment_bytes`` and by ``SEGMENT_GROWTH`` times the previous segment: fine steps at low
    rates (previews), few table entries in all. Each cut is placed at the shortest prefix of the stream from which the decoder,
    padding with zero bytes, reads exactly the steps before it (checked by reading them back),
    so a file truncated at a segment boundary decodes to that segment's last step, and segments
    cost only their table entry: no range-coder flush per segment (~0.03 bits/dim at 32x32).
    """

    def __init__(self, batch: int, dim: int, cfg, min_segment_bytes: int):
        import constriction

        self.enc = constriction.stream.queue.RangeEncoder()
        self.batch, self.dim, self.cfg = batch, dim, cfg
        self.min_bits = 8 * max(1, int(min_segment_bytes))
        self.written: list[tuple["rcc.StepCode", object]] = []
        self.cuts: list[tuple[int, int]] = []   # (steps before the cut, stream bits when decided)
        self.last_cut_bits = 0
        self.last_size = 0
        self.x0 = None   # (pixels, means, scales) coded after the last step (format version 2)

    def num_bits(self) -> int:
        return int(self.enc.num_bits())

    def table_bits(self) -> float:
        return 8.0 * 3 * (len(self.cuts) + 1)   # ~3 bytes per segment table entry

    def write(self, code: "rcc.StepCode", centres) -> None:
        rcc.write_step(self.enc, code, self.cfg, centres)
        self.written.append((code, centres))

    def write_x0(self, tiles_pix, means, scales, mask, side: "_X0Side") -> None:
        side.write(self.enc)
        side.write_pixels(self.enc, tiles_pix, means, scales, mask)
        self.x0 = (tiles_pix, means, scales, mask, side)

    def maybe_end_segment(self) -> None:
        size = self.num_bits() - self.last_cut_bits
        if size >= max(self.min_bits, SEGMENT_GROWTH * self.last_size):
            self.cuts.append((len(self.written), self.num_bits()))
            self.last_cut_bits, self.last_size = self.num_bits(), size

    def segments(self) -> list[container.Segment]:
        if not self.written:
            return []
        # big-endian words: a cut inside a word zeroes its least significant bytes (byte-exact cuts)
        data = _stream_bytes(self.enc.get_compressed())
        data = data[: self._prefix_len(data, len(self.written), len(data) - 4, x0=self.x0 is not None)]  # unread tail
        out, start, steps_before = [], 0, 0
        for steps, bits in self.cuts:
            if steps >= len(self.written):
                break
            end = self._prefix_len(data, steps, max(start, bits // 8 - 4))
            out.append(container.Segment(num_steps=steps - steps_before, payload=data[start:end]))
            start, steps_before = end, steps
        out.append(container.Segment(num_steps=len(self.written) - steps_before, payload=data[start:]))
        return out

    def _prefix_len(self, data: bytes, steps: int, lo: int, x0: bool = False) -> int:
        for n in range(max(0, lo), len(data)):
            if self._reads_back(data[:n], steps, x0):
                return n
        return len(data)

    def _reads_back(self, data: bytes, steps: int, x0: bool = False) -> bool:
        import constriction

        try:
            dec = constriction.stream.queue.RangeDecoder(_stream_words(data))
            for code, centres in self.written[:steps]:
                got = rcc.read_step(dec, self.batch, self.dim, self.cfg, centres)
                if not (np.array_equal(got.num_chunks, code.num_chunks)
                        and all(np.array_equal(a, b) for a, b in zip(got.indices, code.indices))):
                    return False
            if x0:
                tiles_pix, means, scales, mask, side = self.x0
                got = _X0Side.read(dec, side.settings, len(tiles_pix))
                if not all(np.array_equal(a, b) for a, b in ((got.scale_idx, side.scale_idx),
                                                             (got.chan_idx, side.chan_idx), (got.nb_idx, side.nb_idx))):
                    return False
                if not np.array_equal(got.read_pixels(dec, means, scales, mask)[mask], tiles_pix[mask]):
                    return False
        except (ValueError, RuntimeError):
            return False
        return True


def _stream_bytes(words: np.ndarray) -> bytes:
    """A one-stream file's step stream: the range coder's 32-bit words, big-endian."""
    return np.asarray(words, dtype=np.uint32).astype(">u4").tobytes()


def _stream_words(data: bytes) -> np.ndarray:
    """Inverse of :func:`_stream_bytes` for any prefix: missing low-order bytes read as zero."""
    return np.frombuffer(_pad4(data), dtype=">u4").astype(np.uint32)


def _x0_model(diffusion: GaussianDiffusion, x: torch.Tensor, tau: int, eps: torch.Tensor, variance: str):
    """Means and scales (float64 numpy, [B, C, H, W]) of p(x_0 | x_tau): ONE function for both sides."""
    means = diffusion.predict_x0(x, tau, eps).numpy()
    kind = variance if variance != "fixedlarge" or tau == 1 else "fitted"
    scale = float(diffusion.decoder_scale(tau, kind, x))
    return means, np.full_like(means, scale)


def _x0_scaled(scales: np.ndarray, scale_idx: np.ndarray) -> np.ndarray:
    """Tile ``b``'s scales times ``X0_SCALE_FACTORS[scale_idx[b]]`` (IEEE products: both sides agree)."""
    return scales * np.asarray(X0_SCALE_FACTORS, dtype=np.float64)[np.asarray(scale_idx)][:, None, None, None]


@dataclass
class _X0Side:
    """Per-tile side information of the lossless x_0 stage and the ONE place that turns it into the
    coder's means and scales (encoder, decoder and the segment cutter all go through here).

    Stream layout after the last step: the tiles' scale indices (4 raw bits each, if
    ``x0_scale_bits``), their channel coefficients (3 x 3 raw bits each: G|R, B|R, B|G, if
    ``x0_channel_bits``), their neighbour coefficients (18 x 3 raw bits each, if ``x0_neighbours``:
    for channel R, G, B in turn, the residuals of R, G, B above, then of R, G, B to the left), then
    the pixels. Pixel order: without coefficients, the C order of the masked ``[B, 3, H, W]`` tiles
    (one model); with channel coefficients only, channel by channel (every tile's R, then G, then
    B); with neighbours, pixel by pixel in raster order, R, G, B at each, all tiles together. A
    channel's mean is x_hat_0's plus, in this order, its channel terms (G: a_GR·r_R; B: a_BR·r_R +
    a_BG·r_G) and its neighbour terms (3 above, 3 left; residuals outside the tile or image are 0),
    where r = v/127.5 - 1 - x_hat_0 at the decoded value v: float64, term by term, on both sides.
    """

    settings: CodecSettings
    scale_idx: np.ndarray    # [B] int64 (zeros when unused)
    chan_idx: np.ndarray     # [B, 3] int64
    nb_idx: np.ndarray       # [B, 3, 6] int64: channel c's coefficients on (up R, G, B, left R, G, B)

    @classmethod
    def choose(cls, settings: CodecSettings, tiles_pix, means, scales, mask) -> "_X0Side":
        """The encoder's choice (policy): each channel's coefficients by least squares on the tile's
        residuals, rounded to the table; then the scale factor with the fewest ideal bits."""
        b = len(means)
        side = cls(settings, np.full(b, 10, np.int64) if settings.x0_scale_bits else np.zeros(b, np.int64),
                   np.zeros((b, 3), np.int64), np.zeros((b, 3, 6), np.int64))
        if settings.x0_channel_bits:
            res = _residual(tiles_pix, means, mask)
            up, left = _shifted(res)
            table = np.asarray(X0_CHANNEL_COEFS)
            nearest = lambda a: int(np.argmin(np.abs(table - a)))  # noqa: E731
            for i in range(b):
                for c in range(3):
                    m = mask[i, c]
                    preds = [res[i, k][m] for k in range(c)]
                    if settings.x0_neighbours:
                        preds += [up[i, k][m] for k in range(3)] + [left[i, k][m] for k in range(3)]
                    if not preds:
                        continue
                    x = np.stack(preds, 1)
                    a = np.linalg.lstsq(x, res[i, c][m], rcond=None)[0] if len(x) > x.shape[1] else np.zeros(len(preds))
                    for k in range(c):   # chan_idx holds (G|R, B|R, B|G)
                        side.chan_idx[i, c - 1 + k] = nearest(a[k])
                    if settings.x0_neighbours:
                        side.nb_idx[i, c] = [nearest(v) for v in a[c:]]
        if settings.x0_scale_bits:
            eff_means, _ = side.apply(means, scales, tiles_pix, mask)
            side.scale_idx = _choose_x0_scales(tiles_pix, eff_means, scales, mask)
        return side

    def apply(self, means, scales, tiles_pix, mask):
        """Effective (means, scales) ``[B, 3, H, W]`` given all the pixels (encoder side)."""
        if self.settings.x0_scale_bits:
            scales = _x0_scaled(scales, self.scale_idx)
        if self.settings.x0_channel_bits:
            res = _residual(tiles_pix, means, mask)
            up, left = _shifted(res) if self.settings.x0_neighbours else (None, None)
            means = np.stack([self._means(means, res, up, left, c, np.s_[:, :]) for c in range(3)], 1)
        return means, scales

    def _coefs(self) -> tuple[np.ndarray, np.ndarray]:
        table = np.asarray(X0_CHANNEL_COEFS, dtype=np.float64)
        return table[self.chan_idx], table[self.nb_idx]   # [B, 3], [B, 3, 6]

    def _means(self, means, res, up, left, c: int, at, coefs=None) -> np.ndarray:
        """Channel ``c``'s means at pixel(s) ``at`` (an index into the trailing [H, W] axes), from the
        residuals ``res`` (and ``up``/``left``: residuals shifted down/right) — the one formula."""
        a, u = coefs if coefs is not None else self._coefs()
        ix = (slice(None),) + at
        ext = (Ellipsis,) + (None,) * (len(at) - sum(isinstance(v, (int, np.integer)) for v in at))  # [B] over `at`
        m = means[:, c][ix]
        if c == 1:
            m = m + a[:, 0][ext] * res[:, 0][ix]
        elif c == 2:
            m = m + a[:, 1][ext] * res[:, 0][ix]
            m = m + a[:, 2][ext] * res[:, 1][ix]
        if self.settings.x0_neighbours:
            for k in range(3):
                m = m + u[:, c, k][ext] * up[:, k][ix]
            for k in range(3):
                m = m + u[:, c, 3 + k][ext] * left[:, k][ix]
        return m

    def write(self, enc) -> None:
        b = len(self.scale_idx)
        if self.settings.x0_scale_bits:
            rcc._write_raw(enc, self.scale_idx, np.full(b, self.settings.x0_scale_bits, np.int64))
        if self.settings.x0_channel_bits:
            rcc._write_raw(enc, self.chan_idx.reshape(-1), np.full(3 * b, self.settings.x0_channel_bits, np.int64))
        if self.settings.x0_neighbours:
            rcc._write_raw(enc, self.nb_idx.reshape(-1), np.full(18 * b, self.settings.x0_channel_bits, np.int64))

    @classmethod
    def read(cls, dec, settings: CodecSettings, b: int) -> "_X0Side":
        try:
            scale_idx = (rcc._read_raw(dec, np.full(b, settings.x0_scale_bits, np.int64))
                         if settings.x0_scale_bits else np.zeros(b, np.int64))
            chan_idx = (rcc._read_raw(dec, np.full(3 * b, settings.x0_channel_bits, np.int64)).reshape(b, 3)
                        if settings.x0_channel_bits else np.zeros((b, 3), np.int64))
            nb_idx = (rcc._read_raw(dec, np.full(18 * b, settings.x0_channel_bits, np.int64)).reshape(b, 3, 6)
                      if settings.x0_neighbours else np.zeros((b, 3, 6), np.int64))
        except Exception as exc:  # constriction's own errors on a damaged stream
            raise ValueError(f"x0 side information: {exc}") from exc
        return cls(settings, np.asarray(scale_idx, np.int64), np.asarray(chan_idx, np.int64),
                   np.asarray(nb_idx, np.int64))

    def write_pixels(self, enc, tiles_pix, means, scales, mask) -> None:
        if self.settings.x0_scale_bits:
            scales = _x0_scaled(scales, self.scale_idx)
        if not self.settings.x0_channel_bits:
            entropy.write_pixels(enc, tiles_pix[mask], means[mask], scales[mask])
            return
        if not self.settings.x0_neighbours:
            res = np.zeros(means.shape)
            for c in range(3):
                m = mask[:, c]
                entropy.write_pixels(enc, tiles_pix[:, c][m], self._means(means, res, None, None, c, np.s_[:, :])[m],
                                     scales[:, c][m])
                res[:, c] = _residual(tiles_pix[:, c], means[:, c], m)
            return
        eff, _ = self.apply(means, scales, tiles_pix, mask)
        order = (2, 3, 1, 0)   # [H, W, 3, B]: raster order, R G B at each pixel, all tiles together
        sel = mask.transpose(order)
        entropy.write_pixels(enc, tiles_pix.transpose(order)[sel], eff.transpose(order)[sel],
                             scales.transpose(order)[sel])

    def read_pixels(self, dec, means, scales, mask) -> np.ndarray:
        """uint8 tiles ``[B, 3, H, W]`` (zeros outside the image). Raises ValueError on bad data."""
        if self.settings.x0_scale_bits:
            scales = _x0_scaled(scales, self.scale_idx)
        out = np.zeros(means.shape, np.uint8)
        if not self.settings.x0_channel_bits:
            out[mask] = entropy.read_pixels(dec, means[mask], scales[mask])
            return out
        res = np.zeros(means.shape)
        if not self.settings.x0_neighbours:
            for c in range(3):
                m = mask[:, c]
                oc = out[:, c]
                oc[m] = entropy.read_pixels(dec, self._means(means, res, None, None, c, np.s_[:, :])[m], scales[:, c][m])
                res[:, c] = _residual(out[:, c], means[:, c], m)
            return out
        up, left = np.zeros(means.shape), np.zeros(means.shape)
        _, _, h, w = means.shape
        coefs = self._coefs()
        # the coder's parameters as entropy.coder_params makes them (checked once, for all pixels)
        _, std_pix = entropy.coder_params(means, scales)
        std_pix = std_pix.reshape(means.shape)
        for y in range(h):
            for x in range(w):
                for c in range(3):
                    m = mask[:, c, y, x]
                    if not m.any():
                        continue
                    mu = self._means(means, res, up, left, c, (y, x), coefs)
                    mean_pix = (mu[m] + 1.0) * entropy.PIXEL_SCALE
                    if not np.all(np.isfinite(mean_pix)):
                        raise ValueError("x0 means overflow")
                    v = entropy.read_pixels_params(dec, mean_pix, std_pix[:, c, y, x][m])
                    out[m, c, y, x] = v
                    r = _residual(out[:, c, y, x], means[:, c, y, x], m)
                    res[:, c, y, x] = r
                    if y + 1 < h:
                        up[:, c, y + 1, x] = r
                    if x + 1 < w:
                        left[:, c, y, x + 1] = r
        return out


def _residual(pix: np.ndarray, means: np.ndarray, inside) -> np.ndarray:
    """x_0 - x_hat_0 at pixel values ``pix`` in the [-1, 1] convention, 0 where not ``inside`` the
    image: the one expression both sides evaluate (float64)."""
    return np.where(inside, pix / 127.5 - 1.0 - means, 0.0)


def _shifted(res: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Residuals moved one row down (``up[.., y, x] = res[.., y-1, x]``) and one column right; 0 at edges."""
    up, left = np.zeros_like(res), np.zeros_like(res)
    up[..., 1:, :] = res[..., :-1, :]
    left[..., :, 1:] = res[..., :, :-1]
    return up, left


def _choose_x0_scales(tiles_pix: np.ndarray, means: np.ndarray, scales: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The encoder's per-tile factor index: the one with the fewest ideal x_0 bits over the tile's
    pixels inside the image (encoder policy; any index decodes)."""
    idx = np.empty(len(tiles_pix), np.int64)
    for b in range(len(tiles_pix)):
        m = mask[b]
        bits = [entropy.ideal_bits(tiles_pix[b][m], means[b][m], scales[b][m] * f) for f in X0_SCALE_FACTORS]
        idx[b] = int(np.argmin(bits))
    return idx


# ----------------------------------------------------------------------------- decode
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


def read_header(data: bytes) -> tuple[container.ParsedFile, CodecSettings]:
    parsed = container.unpack(data)
    h = parsed.file.header
    if h.profile is not None:
        if h.profile not in PROFILES:
            raise container.UnsupportedVersionError(f"file uses codec profile {h.profile}, unknown to this version")
        settings = PROFILES[h.profile]
    else:
        settings = CodecSettings.from_schedule(h.schedule)
    return parsed, settings


def check_model(parsed: container.ParsedFile, model: LoadedModel) -> None:
    fp = parsed.file.header.fingerprint.hex()
    if not model.fingerprint.startswith(fp):
        raise DecodeError(f"the file was encoded with model {fp}, but the model given is {model.name} "
                          f"({model.fingerprint[:8]}): decode with the same model (--model)")


def decode(data: bytes, model: LoadedModel, *, steps: int | None = None, reconstruct: Reconstruct = "denoise",
           progressive: bool = False, reconstruct_steps: int = 50, seed: int = 0,
           on_step: Callable[[int, int], None] | None = None) -> DecodeResult:
    """Decode ``.ddpm`` bytes. ``steps=N`` uses only the coding steps with T - t + 1 <= N and
    reconstructs from the last one with ``reconstruct``; without ``steps`` a lossless file decodes
    exactly (checksum verified) and a lossy or truncated one from its last complete step."""
    if reconstruct not in RECONSTRUCT_MODES:
        raise ValueError(f"unknown reconstruction {reconstruct!r}; expected one of {RECONSTRUCT_MODES}")
    parsed, settings = read_header(data)
    check_model(parsed, model)
    h = parsed.file.header
    diffusion = model.diffusion
    T = diffusion.num_timesteps
    size = model.image_size
    height, width = h.height, h.width
    B = (-(-height // size)) * (-(-width // size))
    shape = (B, 3, size, size)
    dims_tile = 3 * size * size
    ts = settings.timesteps(T)
    chain = [(T + 1, T)] + list(zip(ts[:-1], ts[1:]))
    cfg = settings.rcc_config()
    counts = _CountPredictor(B, cfg)
    net = _Net(model)
    start = time.perf_counter()
    import constriction

    one_dec = None
    if h.one_stream:  # the complete segments are consecutive pieces of one stream
        one_dec = constriction.stream.queue.RangeDecoder(
            _stream_words(b"".join(s.payload for s in parsed.file.segments)))

    def step_iter() -> Iterator[tuple[int, "rcc.StepCode | None", object]]:
        i = 0
        dec = one_dec
        for seg in parsed.file.segments:
            if not h.one_stream:
                dec = constriction.stream.queue.RangeDecoder(np.frombuffer(_pad4(seg.payload), dtype=np.uint32).copy())
            for _ in range(seg.num_steps):
                if i >= len(chain):
                    raise container.CorruptFileError("the file holds more coding steps than its schedule")
                yield i, dec
                i += 1

    x, eps = None, None
    last_s, decoded = T + 1, 0
    shots: list[tuple[int, np.ndarray]] = []
    with _deterministic_settings():
        for i, dec in step_iter():
            t, s = chain[i]
            if steps is not None and T - s + 1 > steps:
                break
            if i == 0:
                mu_p, var_p, pred = torch.zeros(shape, dtype=torch.float64), 1.0, None
            else:
                p = diffusion.p_mean_variance(x, t, eps, s, settings.variance)
                q_var = float(diffusion.posterior_coefs(t, s, x)[2])
                mu_p, var_p = p.mean, float(p.variance)
                pred = _predicted_chunks(diffusion, t, s, q_var, var_p, dims_tile, cfg)
            try:
                code = rcc.read_step(dec, B, dims_tile, cfg, counts.centres(pred))
            except (ValueError, RuntimeError) as e:
                raise container.CorruptFileError(f"coding step {i} cannot be read: {e}") from None
            counts.update(pred, code.num_chunks)
            e_ = rcc.decode_step(code, dim=dims_tile, seed=h.seed, step=s, cfg=cfg)
            x = (mu_p + math.sqrt(var_p) * e_.double().reshape(shape)).float().double()
            eps = net(x, s)
            last_s, decoded = s, decoded + 1
            if progressive:
                shots.append((T - s + 1, from_tiles(to_uint8(_reconstruct(diffusion, net, x, s, eps, reconstruct,
                                                                         reconstruct_steps, seed)), height, width)))
            if on_step:
                on_step(decoded, len(chain))
        if decoded == 0:
            raise DecodeError("the file holds no complete coding step (truncated inside its first segment?)")
        exact = None
        full_chain = decoded == len(chain) and steps is None
        x0_present = parsed.file.x0 is not None or (h.x0_in_stream and parsed.file.pixel_crc is not None)
        if full_chain and x0_present:
            means, scales = _x0_model(diffusion, x, ts[-1], eps, settings.variance)
            mask = _inside_mask(height, width, size)
            if (settings.x0_scale_bits or settings.x0_channel_bits) and not h.x0_in_stream:
                raise container.CorruptFileError("a version 1 file cannot carry per-tile x0 side information")
            try:
                if h.x0_in_stream:
                    pix = _X0Side.read(one_dec, settings, B).read_pixels(one_dec, means, scales, mask)[mask]
                else:
                    pix = entropy.decode_pixels(parsed.file.x0, means[mask], scales[mask])
            except ValueError:
                pix = None
            tiles = np.zeros(shape, dtype=np.uint8)
            if pix is not None:
                tiles[mask] = pix
                exact = from_tiles(tiles.transpose(0, 2, 3, 1), height, width)
            if pix is None or zlib.crc32(exact.tobytes()) != parsed.file.pixel_crc:
                raise DecodeError("decoded pixels fail the file's checksum: this machine's network outputs differ "
                                  "from the encoder's (other hardware or library version?), or the file is damaged")
        if exact is not None:
            image = exact
        else:
            image = from_tiles(to_uint8(_reconstruct(diffusion, net, x, last_s, eps, reconstruct, reconstruct_steps,
                                                     seed)), height, width)
    return DecodeResult(image=image, lossless=exact is not None, reverse_time=T - last_s + 1,
                        truncated=parsed.truncated, steps_decoded=decoded, progressive=shots,
                        seconds=time.perf_counter() - start, network_seconds=net.seconds)


def _pad4(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 4)


def _reconstruct(diffusion: GaussianDiffusion, net: _Net, x: torch.Tensor, t: int, eps: torch.Tensor,
                 mode: str, num_steps: int, seed: int) -> torch.Tensor:
    """An image estimate from x_t: x_hat_0 (denoise), a sample of p_theta(x_0 | x_t) (ancestral,
    Algorithm 2 on a respaced chain), or the deterministic DDIM/probability-flow decode (flow)."""
    if mode == "denoise" or t <= 1:
        return diffusion.denoise(x, t, eps)
    n = min(num_steps, t)
    ts = [int(v) for v in np.unique(np.linspace(t, 1, n).round().astype(int))[::-1]] + [0]
    gen = torch.Generator().manual_seed(seed)
    cur, e = x, eps
    for j, (a, b) in enumerate(zip(ts[:-1], ts[1:])):
        if j > 0:
            e = net(cur, a)
        x0_hat = diffusion.predict_x0(cur, a, e, clip=True)
        if b == 0:
            return x0_hat
        if mode == "ancestral":
            p = diffusion.p_mean_variance(cur, a, e, b, "fixedsmall", clip=True)
            cur = p.mean + torch.sqrt(p.variance) * torch.randn(cur.shape, generator=gen, dtype=torch.float64)
        else:  # DDIM, eta = 0: x_b = sqrt(abar_b) x0_hat + sqrt(1 - abar_b) eps_hat
            ab = float(diffusion.alphas_cumprod[b])
            e_hat = (cur - math.sqrt(float(diffusion.alphas_cumprod[a])) * x0_hat) / math.sqrt(1 - float(diffusion.alphas_cumprod[a]))
            cur = math.sqrt(ab) * x0_hat + math.sqrt(1 - ab) * e_hat
    return diffusion.predict_x0(cur, ts[-2], net(cur, ts[-2]), clip=True)


# ----------------------------------------------------------------------------- KL-only trace
def trace_theoretical(image: np.ndarray, model: LoadedModel, *, settings: CodecSettings | None = None,
                      seed: int = 0) -> EncodeResult:
    """The paper's own evaluation (Sec. 4.3): the same chain and report as :func:`encode`, but each
    x_s is drawn exactly from q(x_s | x_t, x_0) and only the KLs are counted (no bits written)."""
    settings = settings or default_settings()
    image = check_image(image)
    height, width = image.shape[:2]
    diffusion = model.diffusion
    T = diffusion.num_timesteps
    x0 = to_tiles(image, model.image_size).double()
    num_dims = height * width * 3
    ts = settings.timesteps(T)
    gen = torch.Generator().manual_seed(seed)
    net = _Net(model)
    start = time.perf_counter()
    records, cum_kl = [], 0.0
    with _deterministic_settings():
        q = diffusion.q_mean_variance(x0, T)
        kl = float(diffusion.prior_kl(x0).sum()) / math.log(2)
        x = q.mean + torch.sqrt(q.variance) * torch.randn(x0.shape, generator=gen, dtype=torch.float64)
        chain = [(T + 1, T)] + list(zip(ts[:-1], ts[1:]))
        eps = None
        for i, (t, s) in enumerate(chain):
            if i > 0:
                kl = float(diffusion.step_kl(x0, x, t, eps, s, settings.variance).sum()) / math.log(2)
                q = diffusion.q_posterior(x0, x, t, s)
                x = q.mean + torch.sqrt(q.variance) * torch.randn(x0.shape, generator=gen, dtype=torch.float64)
            x = x.float().double()
            eps = net(x, s)
            cum_kl += kl
            rmse, psnr = _metrics(diffusion.denoise(x, s, eps), image, height, width)
            records.append(StepRecord(reverse_time=T - s + 1, t=s, kl_bits=kl, actual_bits=float("nan"),
                                      cum_kl_bpd=cum_kl / num_dims, cum_bpd=float("nan"), rmse=rmse, psnr=psnr, chunks=0))
        means, scales = _x0_model(diffusion, x, ts[-1], eps, settings.variance)
        mask = _inside_mask(height, width, model.image_size)
        pix = ((x0 + 1.0) * 127.5).round().to(torch.int64).numpy().astype(np.uint8)
        x0_ideal = float(entropy.ideal_bits(pix[mask], means[mask], scales[mask]))
    return EncodeResult(data=b"", steps=records, lossless=True, x0_bits=float("nan"), x0_ideal_bits=x0_ideal,
                        seconds=time.perf_counter() - start, network_seconds=net.seconds, num_dims=num_dims)
