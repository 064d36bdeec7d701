"""The built-in coding profiles: files name one by a byte instead of an explicit schedule.

Each profile is spelled out in full. Never renumber or change one: files written with it must keep
decoding (``tests/test_codec_profiles.py`` pins every field). Append new ones. Measured figures of
each: ``docs/PROFILES.md``; ``ddpm-codec profiles`` lists them.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from ..coding import container
from ..errors import InputError
from .settings import CodecSettings


@dataclass(frozen=True)
class Profile:
    id: int
    name: str
    summary: str            # one line: what it is for
    settings: CodecSettings


_ALL = (
    Profile(1, "pfr12", "first release: Poisson functional representation, 12-bit chunks; reads old files",
            CodecSettings(num_steps=64, t_end=2, schedule_kind="quadratic", chunk_bits=12, log2_candidates=13,
                          variance="fitted", selection="pfr", rate_percent=100, count_model=0, reuse_bits=0,
                          x0_scale_bits=0, x0_channel_bits=0, x0_neighbours=0, exact=0, x0_context=0)),
    Profile(2, "pfr10", "PFR with 10-bit chunks on 2^14 candidates, tau 4; reads old files and compares coders",
            CodecSettings(num_steps=64, t_end=4, schedule_kind="quadratic", chunk_bits=10, log2_candidates=14,
                          variance="fitted", selection="pfr", rate_percent=100, count_model=0, reuse_bits=0,
                          x0_scale_bits=0, x0_channel_bits=0, x0_neighbours=0, exact=0, x0_context=0)),
    Profile(3, "trellis", "trellis coder (Viterbi, 2^10 states), 48 cubic steps to tau 1: the first trellis default",
            CodecSettings(num_steps=48, t_end=1, schedule_kind="cubic", chunk_bits=4, log2_candidates=14,
                          variance="fitted", selection="trellis", rate_percent=105, count_model=0, reuse_bits=0,
                          x0_scale_bits=0, x0_channel_bits=0, x0_neighbours=0, exact=0, x0_context=0)),
    Profile(4, "trellis-pool16", "trellis on a 4x larger pool (2^16 rows, 2^12 states): 1.6 GB of tables",
            CodecSettings(num_steps=48, t_end=1, schedule_kind="cubic", chunk_bits=4, log2_candidates=16,
                          variance="fitted", selection="trellis", rate_percent=105, count_model=0, reuse_bits=0,
                          x0_scale_bits=0, x0_channel_bits=0, x0_neighbours=0, exact=0, x0_context=0)),
    Profile(5, "counts", "trellis with chunk counts snapped to the decoder's prediction (count model 1)",
            CodecSettings(num_steps=48, t_end=1, schedule_kind="cubic", chunk_bits=4, log2_candidates=14,
                          variance="fitted", selection="trellis", rate_percent=105, count_model=1, reuse_bits=0,
                          x0_scale_bits=0, x0_channel_bits=0, x0_neighbours=0, exact=0, x0_context=0)),
    Profile(6, "states13", "2^13 trellis states on the 2^14-row pool; fastest encoder with a plain x_0 decoder",
            CodecSettings(num_steps=48, t_end=1, schedule_kind="cubic", chunk_bits=4, log2_candidates=14,
                          variance="fitted", selection="trellis", rate_percent=105, count_model=1, reuse_bits=3,
                          x0_scale_bits=0, x0_channel_bits=0, x0_neighbours=0, exact=0, x0_context=0)),
    Profile(7, "states17-scale", "2^17 trellis states, per-tile x_0 scale (4 bits per tile)",
            CodecSettings(num_steps=48, t_end=1, schedule_kind="cubic", chunk_bits=4, log2_candidates=14,
                          variance="fitted", selection="trellis", rate_percent=105, count_model=1, reuse_bits=7,
                          x0_scale_bits=4, x0_channel_bits=0, x0_neighbours=0, exact=0, x0_context=0)),
    Profile(8, "x0-channels", "2^17 states; x_0 scale and G, B predicted from decoded R, G residuals (13 bits per tile)",
            CodecSettings(num_steps=48, t_end=1, schedule_kind="cubic", chunk_bits=4, log2_candidates=14,
                          variance="fitted", selection="trellis", rate_percent=105, count_model=1, reuse_bits=7,
                          x0_scale_bits=4, x0_channel_bits=3, x0_neighbours=0, exact=0, x0_context=0)),
    Profile(9, "x0-neighbours", "2^17 states; x_0 scale, cross-channel and above/left prediction (67 bits per tile); float: decodes only where the same kernels run",
            CodecSettings(num_steps=48, t_end=1, schedule_kind="cubic", chunk_bits=4, log2_candidates=14,
                          variance="fitted", selection="trellis", rate_percent=105, count_model=1, reuse_bits=7,
                          x0_scale_bits=4, x0_channel_bits=3, x0_neighbours=1, exact=0, x0_context=0)),
    Profile(10, "exact", "profile 9's coding in exact arithmetic: files decode on any machine; default without a context model until 2026-12-06",
            CodecSettings(num_steps=48, t_end=1, schedule_kind="cubic", chunk_bits=4, log2_candidates=14,
                          variance="fitted", selection="trellis", rate_percent=105, count_model=1, reuse_bits=7,
                          x0_scale_bits=4, x0_channel_bits=3, x0_neighbours=1, exact=1, x0_context=0)),
    Profile(11, "context", "profile 12 in float arithmetic: faster, decodes only where the same kernels run",
            CodecSettings(num_steps=48, t_end=1, schedule_kind="cubic", chunk_bits=4, log2_candidates=14,
                          variance="fitted", selection="trellis", rate_percent=105, count_model=1, reuse_bits=7,
                          x0_scale_bits=0, x0_channel_bits=0, x0_neighbours=0, exact=0, x0_context=1)),
    Profile(12, "exact-context", "48 steps, x_0 by the learned context model, exact arithmetic: the default 2026-12-06",
            CodecSettings(num_steps=48, t_end=1, schedule_kind="cubic", chunk_bits=4, log2_candidates=14,
                          variance="fitted", selection="trellis", rate_percent=105, count_model=1, reuse_bits=7,
                          x0_scale_bits=0, x0_channel_bits=0, x0_neighbours=0, exact=1, x0_context=1)),
    Profile(13, "exact-counts", "the default: profile 12 with count model 2 (cheaper chunk counts); decodes on any machine",
            CodecSettings(num_steps=48, t_end=1, schedule_kind="cubic", chunk_bits=4, log2_candidates=14,
                          variance="fitted", selection="trellis", rate_percent=105, count_model=2, reuse_bits=7,
                          x0_scale_bits=0, x0_channel_bits=0, x0_neighbours=0, exact=1, x0_context=1)),
    Profile(14, "exact-counts-side", "profile 10 with count model 2: the default for a model without a context model",
            CodecSettings(num_steps=48, t_end=1, schedule_kind="cubic", chunk_bits=4, log2_candidates=14,
                          variance="fitted", selection="trellis", rate_percent=105, count_model=2, reuse_bits=7,
                          x0_scale_bits=4, x0_channel_bits=3, x0_neighbours=1, exact=1, x0_context=0)),
)
PROFILE_INFO: dict[int, Profile] = {p.id: p for p in _ALL}
PROFILES: dict[int, CodecSettings] = {p.id: p.settings for p in _ALL}
# Defaults are exact arithmetic: a lossless codec's default file must decode anywhere (issue 25).
DEFAULT_PROFILE = 13         # exact-counts: x_0 by the learned context model, count model 2, portable
PLAIN_DEFAULT_PROFILE = 14   # exact-counts-side: the default for a model without a learned x_0 context model
FLOAT_FALLBACK = {13: 11, 12: 11, 14: 9, 10: 9}   # for a model exact arithmetic cannot run (a non-linear beta schedule)


def exact_capable(model) -> bool:
    """Whether ``model`` can code in exact arithmetic: its beta schedule is built without libm (linear)."""
    return model.config.get("diffusion", {}).get("schedule", "linear") == "linear"


def default_profile(model=None) -> int:
    """The default profile for ``model``: ``DEFAULT_PROFILE`` (exact, x_0 by the learned context model)
    when it has a context model or no model is named, else ``PLAIN_DEFAULT_PROFILE`` (exact, x_0 with
    per-tile side information); their float twins (11, 9) only for a model that exact arithmetic
    cannot run."""
    pid = DEFAULT_PROFILE
    if model is not None and getattr(model, "x0_context", None) is None:
        pid = PLAIN_DEFAULT_PROFILE
    if model is not None and not exact_capable(model):
        pid = FLOAT_FALLBACK[pid]
    return pid


def default_settings(model=None) -> CodecSettings:
    return PROFILES[default_profile(model)]


def profile_id(spec: int | str) -> int:
    """A profile's id from its id or name (``9``, ``"9"`` or ``"x0-neighbours"``)."""
    by_name = {p.name: p.id for p in _ALL}
    if isinstance(spec, str) and spec in by_name:
        return by_name[spec]
    try:
        pid = int(spec)
    except (TypeError, ValueError):
        pid = None
    if pid not in PROFILES:
        known = ", ".join(f"{p.id} ({p.name})" for p in _ALL)
        raise InputError(f"unknown profile {spec!r}; known: {known}")
    return pid


def settings_with(profile: int | str | None = None, model=None, **overrides) -> CodecSettings:
    """A profile's settings (default: :func:`default_profile` of ``model``) with the non-None
    ``overrides`` applied (validated). Another coder than the trellis drops the profile's
    ``reuse_bits`` (trellis states) unless given."""
    if profile is None:
        profile = default_profile(model)
    over = {k: v for k, v in overrides.items() if v is not None}
    if over.get("selection", "trellis") != "trellis":
        over.setdefault("reuse_bits", 0)
    return replace(PROFILES[profile_id(profile)], **over)


def profile_of(settings: CodecSettings) -> int | None:
    """The id of the profile with exactly these settings (a file then names it by one byte)."""
    for pid, s in PROFILES.items():
        if s == settings:
            return pid
    return None


def read_header(data: bytes) -> tuple[container.ParsedFile, CodecSettings]:
    """The parsed container and the coding settings it names (a profile or an explicit schedule)."""
    parsed = container.unpack(data)
    h = parsed.file.header
    if h.profile is not None:
        if h.profile not in PROFILES:
            raise container.UnsupportedVersionError(f"file uses codec profile {h.profile}, unknown to this version")
        settings = PROFILES[h.profile]
    else:
        settings = CodecSettings.from_schedule(h.schedule)
    return parsed, settings
