"""Pins every built-in profile and the coder's format constants: files name these by a byte, so
changing any value silently changes what existing files mean. A failure here means: append a new
profile or constant instead (and update docs/PROFILES.md), never edit one in place."""
from __future__ import annotations

import hashlib
import json
import math

import pytest

from ddpm_codec import codec
from ddpm_codec.arithmetic import EXACT, FLOAT
from ddpm_codec.coding import rcc
from ddpm_codec.coding.rcc import bitstream, layout

FIELDS = ("num_steps", "t_end", "schedule_kind", "chunk_bits", "log2_candidates", "variance", "selection",
          "rate_percent", "count_model", "reuse_bits", "x0_scale_bits", "x0_channel_bits", "x0_neighbours", "exact",
          "x0_context")
_TRELLIS = (48, 1, "cubic", 4, 14, "fitted", "trellis", 105)
PINNED = {
    1: ("pfr12", (64, 2, "quadratic", 12, 13, "fitted", "pfr", 100, 0, 0, 0, 0, 0, 0, 0)),
    2: ("pfr10", (64, 4, "quadratic", 10, 14, "fitted", "pfr", 100, 0, 0, 0, 0, 0, 0, 0)),
    3: ("trellis", _TRELLIS + (0, 0, 0, 0, 0, 0, 0)),
    4: ("trellis-pool16", (48, 1, "cubic", 4, 16, "fitted", "trellis", 105, 0, 0, 0, 0, 0, 0, 0)),
    5: ("counts", _TRELLIS + (1, 0, 0, 0, 0, 0, 0)),
    6: ("states13", _TRELLIS + (1, 3, 0, 0, 0, 0, 0)),
    7: ("states17-scale", _TRELLIS + (1, 7, 4, 0, 0, 0, 0)),
    8: ("x0-channels", _TRELLIS + (1, 7, 4, 3, 0, 0, 0)),
    9: ("x0-neighbours", _TRELLIS + (1, 7, 4, 3, 1, 0, 0)),
    10: ("exact", _TRELLIS + (1, 7, 4, 3, 1, 1, 0)),
    11: ("context", _TRELLIS + (1, 7, 0, 0, 0, 0, 1)),
    12: ("exact-context", _TRELLIS + (1, 7, 0, 0, 0, 1, 1)),
    13: ("exact-counts", _TRELLIS + (2, 7, 0, 0, 0, 1, 1)),
    14: ("exact-counts-side", _TRELLIS + (2, 7, 4, 3, 1, 1, 0)),
}
# the explicit-schedule bytes each profile would write (container.Schedule fields), from FORMAT.md's
# bit layout: variance byte = kind | x0_scale_bits << 4 | 0x80 channels | 0x20 neighbours | 0x10 exact
# | 0x08 context model;
# selection byte = coder | (reuse >> 2) << 2 | count_model << 4 | (reuse & 3) << 6
SCHEDULE_BYTES = {1: (0, 1, 0), 2: (0, 1, 0), 3: (2, 1, 2), 4: (2, 1, 2), 5: (2, 1, 2 | 1 << 4),
                  6: (2, 1, 2 | 1 << 4 | 3 << 6), 7: (2, 1 | 4 << 4, 2 | 1 << 2 | 1 << 4 | 3 << 6),
                  8: (2, 1 | 4 << 4 | 0x80, 2 | 1 << 2 | 1 << 4 | 3 << 6),
                  9: (2, 1 | 4 << 4 | 0x80 | 0x20, 2 | 1 << 2 | 1 << 4 | 3 << 6),
                  10: (2, 1 | 4 << 4 | 0x80 | 0x20 | 0x10, 2 | 1 << 2 | 1 << 4 | 3 << 6),
                  11: (2, 1 | 0x08, 2 | 1 << 2 | 1 << 4 | 3 << 6),
                  12: (2, 1 | 0x10 | 0x08, 2 | 1 << 2 | 1 << 4 | 3 << 6),
                  13: (2, 1 | 0x10 | 0x08, 2 | 1 << 2 | 2 << 4 | 3 << 6),
                  14: (2, 1 | 4 << 4 | 0x80 | 0x20 | 0x10, 2 | 1 << 2 | 2 << 4 | 3 << 6)}


def test_every_profile_is_pinned_field_by_field():
    assert sorted(codec.PROFILES) == sorted(PINNED)
    assert codec.DEFAULT_PROFILE == 13 and codec.PLAIN_DEFAULT_PROFILE == 14   # exact: portable by default
    assert codec.PROFILES[13].arithmetic is EXACT and codec.PROFILES[14].arithmetic is EXACT
    assert tuple(f.name for f in codec.CodecSettings.__dataclass_fields__.values()) == FIELDS
    for pid, (name, values) in PINNED.items():
        s = codec.PROFILES[pid]
        assert tuple(getattr(s, f) for f in FIELDS) == values, pid
        assert codec.PROFILE_INFO[pid].name == name and codec.PROFILE_INFO[pid].settings is s
        assert codec.profile_id(name) == codec.profile_id(str(pid)) == pid
        assert codec.profile_of(s) == pid   # no two profiles alike: a file's byte names one


@pytest.mark.parametrize("pid", sorted(PINNED))
def test_profile_schedule_bytes_and_round_trip(pid):
    s = codec.PROFILES[pid]
    sch = s.to_schedule()
    assert (sch.kind, sch.variance_kind, sch.selection) == SCHEDULE_BYTES[pid]
    assert (sch.num_steps, sch.t_end, sch.chunk_bits, sch.log2_candidates, sch.rate_percent) == (
        s.num_steps, s.t_end, s.chunk_bits, s.log2_candidates, s.rate_percent)
    assert codec.CodecSettings.from_schedule(sch) == s


def test_profile_coder_configs_are_pinned():
    """The RCC parameters each profile implies (not written to files: fixed by the profile)."""
    for pid, s in codec.PROFILES.items():
        cfg = s.rcc_config()
        trellis = s.selection == "trellis"
        assert cfg.min_step_bits == 3.0
        assert (cfg.snap_up, cfg.snap_down, cfg.snap_abs, cfg.snap_free) == (0.12, 0.04, 2.0, 0)   # encoder policy
        if s.count_model == 2:   # its own deviation and the masses where one segment is predicted
            assert (cfg.chunks_abs_scale, cfg.chunks_rel_scale, cfg.unit_zero, cfg.unit_spike) == (2.0, 0.05, 0.5, 0.45)
        else:
            assert (cfg.chunks_abs_scale, cfg.chunks_rel_scale) == ((0.6, 0.03) if trellis else (0.01, 0.25))
            assert (cfg.unit_zero, cfg.unit_spike) == (0.0, 0.0)
        assert s.prior_prediction == (0.0 if s.count_model == 2 else None)
        assert cfg.rate_factor == s.rate_percent / 100
        assert cfg.count_spike == {0: 0.0, 1: 0.8, 2: 0.85}[s.count_model]
        assert cfg.state_bits == ((s.log2_candidates - s.chunk_bits + s.reuse_bits) if trellis else 0)
        assert cfg.arithmetic is (EXACT if s.exact else FLOAT)
    assert codec.PROFILES[9].rcc_config().state_bits == 17


def test_format_constants_are_pinned():
    assert codec.SCHEDULE_KINDS == ("quadratic", "uniform", "cubic")
    assert codec.VARIANCE_IDS == ("fixedsmall", "fitted", "fixedlarge")
    assert codec.SELECTION_IDS == ("pfr", "mrc", "trellis")
    assert codec.COUNT_SPIKES == {0: 0.0, 1: 0.8, 2: 0.85}
    assert codec.COUNT_MODEL_2 == dict(chunks_abs_scale=2.0, chunks_rel_scale=0.05, unit_zero=0.5, unit_spike=0.45)
    assert codec.TRELLIS_COUNT_SCALE == (0.6, 0.03)
    assert codec.X0_MODELS == {"model": (0, 0, 0, 0), "scale": (4, 0, 0, 0), "channels": (4, 3, 0, 0),
                               "neighbours": (4, 3, 1, 0), "context": (0, 0, 0, 1)}
    # channel coefficients: the exact binary fractions k/16, k = -1..6
    assert codec.X0_CHANNEL_COEFS == tuple(k / 16 for k in range(-1, 7))
    # scale factors: 2^((i - 10)/16) written out; each within one ulp of the closed form, exact at i = 10
    assert len(codec.X0_SCALE_FACTORS) == 16 and codec.X0_SCALE_FACTORS[10] == 1.0
    for i, f in enumerate(codec.X0_SCALE_FACTORS):
        assert abs(f - 2.0 ** ((i - 10) / 16)) <= math.ulp(f)
    assert codec.X0_SCALE_FACTORS[2] == math.sqrt(0.5) and codec.X0_SCALE_FACTORS[14] == 2.0 ** 0.25
    assert codec.X0_SCALE_FACTORS == (
        0.6484197773255048, 0.6771277734684463, 0.7071067811865476, 0.7384130729697497, 0.7711054127039704,
        0.8052451659746271, 0.8408964152537145, 0.8781260801866497, 0.9170040432046712, 0.9576032806985737, 1.0,
        1.0442737824274138, 1.0905077326652577, 1.1387886347566916, 1.189207115002721, 1.241857812073484)
    assert bitstream.COUNT_FLOOR == 2.0 ** -10
    assert rcc.RCCConfig().min_step_bits == 3.0


def test_rcc_layout_constants_are_pinned():
    # reuse_bits: segment j's rotation ((j + 1) * golden-ratio constant >> 13) mod M, made odd
    m = 1 << 14
    assert [layout.reuse_shift(j, m) for j in range(6)] == [14931, 13479, 12027, 10575, 9123, 7671]
    assert all(layout.reuse_shift(j, m) % 2 == 1 for j in range(100))
    assert list(layout.block_bounds(10, 3)) == [0, 4, 7, 10]   # first dim % c blocks one longer


def test_pfr_index_tables_are_pinned():
    tables = bitstream.index_tables()
    canon = json.dumps({k: list(v) for k, v in tables.items()}, sort_keys=True, separators=(",", ":"))
    assert hashlib.sha256(canon.encode()).hexdigest() == \
        "fc7b13835f626219d4c24733c682035f8c1b058bfe52621956b23a57ed82d1d3"
    assert len(tables) == 44
    assert tables["10,14"] == (4085, 3518, 3561, 4096, 4499, 4739, 4990, 5198, 5427, 5656, 5350, 5536, 4652, 4205, 16)
    # each table has L + 1 buckets (floor(log2(n + 1)) for n < 2^L)
    for key, t in tables.items():
        assert len(t) == int(key.split(",")[1]) + 1


def test_profiles_command_lists_every_profile_with_the_default_marked():
    from click.testing import CliRunner

    from ddpm_codec.cli.main import main

    res = CliRunner().invoke(main, ["profiles"])
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    for pid, (name, _) in PINNED.items():
        row = [ln for ln in lines if ln.split()[:2] in (["*", str(pid)], [str(pid), name])
               or (ln.lstrip("* ").split()[:2] == [str(pid), name])]
        assert len(row) == 1, (pid, res.output)
        assert row[0].startswith("*") == (pid == codec.DEFAULT_PROFILE)


def test_cli_takes_profiles_by_name_and_refuses_unknown_ones_in_one_line(tmp_path):
    from click.testing import CliRunner

    from ddpm_codec.cli.main import main

    res = CliRunner().invoke(main, ["encode", str(tmp_path / "none.png"), "--profile", "no-such-profile"])
    assert res.exit_code != 0 and "unknown profile 'no-such-profile'" in res.output
    assert "9 (x0-neighbours)" in res.output and len(res.output.strip().splitlines()) == 1
    res = CliRunner().invoke(main, ["encode", str(tmp_path / "none.png"), "--x0-model", "bogus"])
    assert res.exit_code != 0 and "unknown x0 model 'bogus'" in res.output
    assert codec.settings_with("states13") == codec.PROFILES[6]
    plain = codec.settings_with(9, **codec.x0_model_fields("model"))
    assert (plain.x0_scale_bits, plain.x0_channel_bits, plain.x0_neighbours) == (0, 0, 0)
    assert plain.reuse_bits == 7 and codec.profile_of(plain) is None   # written as an explicit schedule
