"""What a file's coding settings are: the fields of a schedule and the format constants they index.

Everything in :class:`CodecSettings` is written to a file, as a profile id (:mod:`.profiles`) or as
an explicit schedule (:meth:`CodecSettings.to_schedule`). The tuples below are indexed by bytes in
files: append only, never reorder or change (``tests/test_codec_profiles.py`` pins them).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..arithmetic import Arithmetic, arithmetic
from ..errors import InputError
from ..coding import container
from ..coding.rcc import layout as rcc

SCHEDULE_KINDS = ("quadratic", "uniform", "cubic")   # file ids: append only
VARIANCE_IDS = ("fixedsmall", "fitted", "fixedlarge")
SELECTION_IDS = ("pfr", "mrc", "trellis")
# count models (bits 4-5 of an explicit schedule's selection byte; bits 0-1: the selection, bits 6-7
# and 2-3: the low and high bits of the trellis's reuse_bits): the mass the chunk-count model puts on
# the decoder's prediction (coding.rcc.bitstream.chunk_count_probs); ids append only
COUNT_SPIKES = {0: 0.0, 1: 0.8, 2: 0.85}
TRELLIS_COUNT_SCALE = (0.6, 0.03)   # (abs, rel) deviation of the trellis's chunk-count model (count models 0, 1)
# Count model 2 (issue 28; fitted to the counts of CIFAR-10 test images 100-179, docs/results/file-overhead.md):
# its own (abs, rel) deviation; where one segment is predicted, half the mass on a free step (0 segments,
# coding.rcc.bitstream.chunk_count_probs); and the prior step x_T coded against a prediction of 0 (not the
# Elias-gamma code: 3.7 bits for a step that is always free). The encoder's counts are those of count model 1
# (the same snap window), so the chain, its samples and x_0 are profile 12's: only the count bits change.
COUNT_MODEL_2 = dict(chunks_abs_scale=2.0, chunks_rel_scale=0.05, unit_zero=0.5, unit_spike=0.45)
# Per-tile scale of the x_0 decoder (x0_scale_bits = 4): tile b codes x_0 with the decoder's scale
# times X0_SCALE_FACTORS[i_b], i_b sent in 4 raw bits. The factors are 2^((i - 10)/16) written out
# (not computed: libm's pow may differ in the last bit between machines; the decoder must build the
# identical scales).
X0_SCALE_FACTORS = (0.6484197773255048, 0.6771277734684463, 0.7071067811865476, 0.7384130729697497,
                    0.7711054127039704, 0.8052451659746271, 0.8408964152537145, 0.8781260801866497,
                    0.9170040432046712, 0.9576032806985737, 1.0, 1.0442737824274138, 1.0905077326652577,
                    1.1387886347566916, 1.189207115002721, 1.241857812073484)
# Cross-channel and neighbour x_0 prediction (x0_channel_bits = 3): each tile's coefficients are
# indices into this table (3 raw bits each). Exact binary fractions.
X0_CHANNEL_COEFS = (-0.0625, 0.0, 0.0625, 0.125, 0.1875, 0.25, 0.3125, 0.375)
# --x0-model names: (x0_scale_bits, x0_channel_bits, x0_neighbours, x0_context)
X0_MODELS = {"model": (0, 0, 0, 0), "scale": (4, 0, 0, 0), "channels": (4, 3, 0, 0), "neighbours": (4, 3, 1, 0),
             "context": (0, 0, 0, 1)}


def x0_model_fields(name: str) -> dict[str, int]:
    """The :class:`CodecSettings` fields of an x_0 model name (see ``X0_MODELS``)."""
    if name not in X0_MODELS:
        raise InputError(f"unknown x0 model {name!r}; expected one of {', '.join(X0_MODELS)}")
    return dict(zip(("x0_scale_bits", "x0_channel_bits", "x0_neighbours", "x0_context"), X0_MODELS[name]))


@dataclass(frozen=True, kw_only=True)
class CodecSettings:
    """How an image is coded. Everything here is written to the file (as a profile id or explicitly).
    Keyword-only; the defaults are the default profile's (12: exact arithmetic, the context model's x_0),
    so ``CodecSettings()`` is what ``encode`` does with no options (tested)."""

    num_steps: int = 48                     # Gaussian coding steps T = t_1 > ... > t_S = t_end
    t_end: int = 1                          # tau: x_0 is coded from x_tau
    schedule_kind: str = "cubic"            # spacing of the chain (dense near tau)
    chunk_bits: int = 4                     # PFR: KL per chunk; trellis: path bits per segment
    log2_candidates: int = 14               # pool rows (trellis: state bits + chunk_bits)
    variance: str = "fitted"                # p_theta's variance on the coding steps
    selection: str = "trellis"              # the reverse channel coder (coding.rcc)
    rate_percent: int = 105                 # bits sent per 100 bits of KL (trellis)
    count_model: int = 2                    # chunk counts: 0 geometric; 1 with 80 % at the prediction; 2 with
                                            # 85 %, free steps where one segment is predicted ~1 bit
    reuse_bits: int = 7                     # trellis: 2^reuse_bits x the states on the same pool (coding.rcc)
    x0_scale_bits: int = 0                  # 4: each tile's x_0 decoder scale x X0_SCALE_FACTORS[i], i sent
    x0_channel_bits: int = 0                # 3: x_0's G and B means predicted from decoded R (G) residuals
    x0_neighbours: int = 0                  # 1: and every channel's from the residuals above and to the left
    exact: int = 1                          # 1: exact arithmetic for everything the decoder depends on (the
                                            # network, the chain, the count and x_0 models): portable files
                                            # (the file's bit; settings.arithmetic is the object code asks)
    x0_context: int = 1                     # 1: x_0 by the model's learned context model (models.x0_context),
                                            # 12 passes; no side information

    def __post_init__(self):
        if self.schedule_kind not in SCHEDULE_KINDS:
            raise InputError(f"unknown schedule kind {self.schedule_kind!r}; expected one of {SCHEDULE_KINDS}")
        if self.variance not in VARIANCE_IDS:
            raise InputError(f"unknown variance {self.variance!r}; expected one of {VARIANCE_IDS}")
        if not 1 <= self.chunk_bits <= 24 or not 1 <= self.log2_candidates <= 24:
            raise InputError("chunk_bits and log2_candidates must be in [1, 24]")
        if self.selection not in SELECTION_IDS:
            raise InputError(f"unknown selection {self.selection!r}; expected one of {SELECTION_IDS}")
        if self.count_model not in COUNT_SPIKES:
            raise InputError(f"unknown count model {self.count_model}; expected one of {sorted(COUNT_SPIKES)}")
        if not 0 <= self.reuse_bits <= 8:
            raise InputError(f"reuse_bits must be in [0, 8], got {self.reuse_bits}")
        if self.x0_scale_bits not in (0, 4):
            raise InputError(f"x0_scale_bits must be 0 or 4, got {self.x0_scale_bits}")
        if self.x0_channel_bits not in (0, 3):
            raise InputError(f"x0_channel_bits must be 0 or 3, got {self.x0_channel_bits}")
        if self.x0_neighbours not in (0, 1) or (self.x0_neighbours and not self.x0_channel_bits):
            raise InputError(f"x0_neighbours must be 0 or 1, and 1 only with x0_channel_bits, got {self.x0_neighbours}")
        if self.exact not in (0, 1):
            raise InputError(f"exact must be 0 or 1, got {self.exact}")
        if self.x0_context not in (0, 1) or (self.x0_context and (self.x0_scale_bits or self.x0_channel_bits)):
            raise InputError(f"x0_context must be 0 or 1, and 1 only without per-tile x0 side information, "
                             f"got {self.x0_context}")
        if not 25 <= self.rate_percent <= 255:
            raise InputError(f"rate_percent must be in [25, 255], got {self.rate_percent}")
        try:
            self.rcc_config()  # validates the combination (e.g. trellis state bits)
        except ValueError as exc:
            raise InputError(str(exc)) from None

    @property
    def arithmetic(self) -> Arithmetic:
        """The arithmetic everything a decoder depends on is computed in (``exact``: the file's bit)."""
        return arithmetic(self.exact)

    def timesteps(self, num_timesteps: int) -> list[int]:
        from ..diffusion import respaced_timesteps

        return respaced_timesteps(self.num_steps, num_timesteps, kind=self.schedule_kind, t_end=self.t_end,
                                  arithmetic=self.arithmetic)

    def rcc_config(self) -> rcc.RCCConfig:
        counts = {}
        if self.selection == "trellis":  # counts predicted per tile to about ±1 (chain.CountPredictor)
            counts = dict(chunks_abs_scale=TRELLIS_COUNT_SCALE[0], chunks_rel_scale=TRELLIS_COUNT_SCALE[1])
        if self.count_model == 2:
            counts = COUNT_MODEL_2
        return rcc.RCCConfig(chunk_bits=self.chunk_bits, log2_candidates=self.log2_candidates,
                             selection=self.selection, rate_factor=self.rate_percent / 100,
                             count_spike=COUNT_SPIKES[self.count_model], reuse_bits=self.reuse_bits,
                             arithmetic=self.arithmetic, **counts)

    @property
    def prior_prediction(self) -> float | None:
        """The count model's prediction for the prior step x_T (sent against N(0, I); free unless the
        schedule leaves signal at T): count model 2 predicts 0 segments, the older ones none (an
        Elias-gamma code, ~3.7 bits)."""
        return 0.0 if self.count_model >= 2 else None

    def to_schedule(self) -> container.Schedule:
        return container.Schedule(kind=SCHEDULE_KINDS.index(self.schedule_kind), num_steps=self.num_steps,
                                  t_end=self.t_end, chunk_bits=self.chunk_bits,
                                  log2_candidates=self.log2_candidates,
                                  variance_kind=VARIANCE_IDS.index(self.variance) | (self.x0_scale_bits << 4)
                                  | (0x80 if self.x0_channel_bits else 0) | (0x20 if self.x0_neighbours else 0)
                                  | (0x10 if self.exact else 0) | (0x08 if self.x0_context else 0),
                                  selection=SELECTION_IDS.index(self.selection) | (self.reuse_bits >> 2 << 2)
                                  | (self.count_model << 4) | ((self.reuse_bits & 3) << 6),
                                  rate_percent=self.rate_percent)

    @classmethod
    def from_schedule(cls, s: container.Schedule) -> "CodecSettings":
        # selection byte: bits 0-1 coder, 4-5 count model, 6-7 and 2-3 the low and high bits of reuse_bits
        sel, count_model = s.selection & 0x3, (s.selection >> 4) & 0x3
        reuse_bits = (s.selection >> 6) | (((s.selection >> 2) & 0x3) << 2)
        # variance byte: bits 0-3 the variance kind, 6 x0_scale_bits 4, 7 cross-channel x0 coefficients
        # (3 bits each), 5 neighbour coefficients too, 4 exact arithmetic, 3 the learned x0 context model
        variance, x0_scale_bits = s.variance_kind & 0x07, (s.variance_kind >> 4) & 0x4
        x0_context = 1 if s.variance_kind & 0x08 else 0
        exact = 1 if s.variance_kind & 0x10 else 0
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
                       x0_scale_bits=x0_scale_bits, x0_channel_bits=x0_channel_bits, x0_neighbours=x0_neighbours,
                       exact=exact, x0_context=x0_context)
        except InputError as exc:
            raise container.CorruptFileError(f"file names impossible coding settings: {exc}") from exc

    def x0_side_bits_per_tile(self) -> int:
        """Raw bits of per-tile x_0 side information: scale index, channel and neighbour coefficients."""
        return self.x0_scale_bits + 3 * self.x0_channel_bits + 18 * self.x0_channel_bits * self.x0_neighbours

