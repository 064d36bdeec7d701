"""A human-readable description of a ``.ddpm`` file (what ``ddpm-codec info`` prints)."""
from __future__ import annotations


def describe_file(data: bytes, name: str) -> list[str]:
    """Lines describing the file ``data`` (called ``name`` in the first line): size and bits/dim,
    model fingerprint, seed, the schedule and coder, the per-segment sizes and the x_0 part.

    Reads only the header and framing (no model needed). Raises what ``codec.read_header`` raises
    (``DdpmFormatError`` and its subclasses) on a damaged or foreign file."""
    from .profiles import read_header

    parsed, settings = read_header(data)
    f = parsed.file
    h = f.header
    dims = h.height * h.width * 3
    lines = [f"{name}: {len(data)} bytes, {8 * len(data) / dims:.4f} bits/dim, {h.width}x{h.height} RGB",
             (f"model fingerprint {h.fingerprint.hex()}, seed {h.seed}, "
              f"{'lossless' if h.lossless else 'lossy'}{', TRUNCATED' if parsed.truncated else ''}")]
    prof = f"profile {h.profile}" if h.profile else "explicit schedule"
    if settings.selection == "trellis":
        pool = f" on 2^{settings.log2_candidates} pool rows" if settings.reuse_bits else ""
        coder = (f"trellis coder: 2^{settings.rcc_config().state_bits} states{pool}, {settings.chunk_bits} "
                 f"path bits per segment, {settings.rate_percent}% rate")
        if settings.count_model:
            coder += f", count model {settings.count_model}"
    else:
        coder = f"{settings.selection} coder: {settings.chunk_bits}-bit chunks, 2^{settings.log2_candidates} candidates"
    x0_side = [n for n, on in (("scale", settings.x0_scale_bits), ("channel coefficients", settings.x0_channel_bits),
                               ("neighbour coefficients", settings.x0_neighbours)) if on]
    x0_scale = f", per-tile x0 {' and '.join(x0_side)}" if x0_side else ""
    if settings.x0_context:
        x0_scale = ", x0 by the model's learned context model (the fingerprint covers both)"
    lines.append(f"schedule ({prof}): {settings.num_steps} Gaussian steps, {settings.schedule_kind} spacing, "
                 f"t_end {settings.t_end}, variance {settings.variance}{x0_scale}; {coder}"
                 + ("; exact arithmetic (decodes bit-exactly on any machine)" if settings.exact else ""))
    if h.stop is not None:
        lines.append(f"stops exactly at t = {h.stop} (format version {parsed.version}): the schedule's steps above it, then one "
                     f"step straight to it")
    payload = sum(len(s.payload) for s in f.segments) + (len(f.x0) if f.x0 else 0)
    lines.append(f"header and framing: {len(data) - payload} bytes")
    if f.segments:
        lines.append("segments (cut from one coded stream):" if h.one_stream else "segments (one coded stream each):")
    step = 0
    for i, s in enumerate(f.segments):
        tail = " (ending with x0)" if h.x0_in_stream and i == parsed.declared_segments - 1 else ""
        if s.num_steps == 0:   # version 5's last segment: the rest of the chain
            rest = "the end" if h.lossless else f"the stop (t = {h.stop})"
            lines.append(f"  segment {i}: steps {step + 1} to {rest}, {len(s.payload)} bytes{tail}")
            continue
        lines.append(f"  segment {i}: steps {step + 1}-{step + s.num_steps}, {len(s.payload)} bytes{tail}")
        step += s.num_steps
    if f.x0 is not None:
        lines.append(f"  x0 (lossless): {len(f.x0)} bytes, pixel crc32 {f.pixel_crc:08x}")
    elif h.x0_in_stream and f.pixel_crc is not None:
        lines.append(f"  x0 (lossless): coded at the end of the last segment (format version 2), "
                     f"pixel crc32 {f.pixel_crc:08x}")
    elif parsed.merged_crc is not None:
        keyed = " and the model's fingerprint" if parsed.version == 5 else ""
        lines.append(f"  x0 (lossless): coded at the end of the last segment (format version {parsed.version}), one "
                     f"crc32 {parsed.merged_crc[1]:08x} over the pixels{keyed} and the file: checked when decoded")
    elif parsed.keyed_crc16 is not None:
        lines.append(f"  crc16 {parsed.keyed_crc16[1]:04x} over the model's fingerprint and the file (format version "
                     f"5): checked when decoded")
    if parsed.truncated:
        lines.append(f"  (truncated: {parsed.complete_segments} of {parsed.declared_segments} segments complete)")
    return lines


def bit_lines(acc) -> list[str]:
    """Where a file's bits go (a :class:`~ddpm_codec.codec.api.BitAccounting`, from
    ``decode(..., account=True)``): framing field by field, the steps' counts and indices (one row per
    step that sends bits), x_0, and the payload left over (the range coder's rounding and cuts)."""
    dims = acc.num_dims
    total = acc.framing_bits + 8 * acc.payload_bytes

    def row(name: str, bits: float) -> str:
        return f"  {name:<32} {bits:10.1f} bits  {bits / dims:.4f} bits/dim  {100 * bits / total:5.1f} %"

    lines = [f"{total} bits in all ({total / dims:.4f} bits/dim over {dims} dims):", "framing:"]
    lines += [row(name, 8 * n) for name, n in acc.framing]
    lines.append(row("framing total", acc.framing_bits))
    counts = sum(s.count_bits for s in acc.steps)
    index = sum(s.index_bits for s in acc.steps)
    lines.append(f"coding steps (count bits: -log2 P under the count model; index bits: the path sent):")
    lines.append(f"  {'T-t+1':>6} {'t':>5} {'chunks':>7} {'count bits':>11} {'index bits':>11}")
    for s in acc.steps:
        if s.chunks or s.count_bits >= 0.05:
            lines.append(f"  {s.reverse_time:>6} {s.t:>5} {s.chunks:>7} {s.count_bits:>11.2f} {s.index_bits:>11.0f}")
    free = sum(1 for s in acc.steps if not s.chunks)
    lines.append(f"  ({len(acc.steps)} steps, {free} of them free: no chunks)")
    lines.append(row("chunk counts", counts))
    lines.append(row("indices", index))
    if acc.x0_bits is not None:
        lines.append(row("x0 (model code length)", acc.x0_bits))
    lines.append(row("coder overhead and padding", acc.padding_bits))
    return lines


_STEP_COLUMNS = ("T-t+1", "t", "KL bits", "actual", "bits/dim", "RMSE", "PSNR", "chunks")
_STEP_WIDTHS = (8, 6, 10, 10, 10, 8, 7, 6)


def _row(cols) -> str:
    return "| " + " | ".join(str(c).rjust(w) for c, w in zip(cols, _STEP_WIDTHS)) + " |"


def step_table_header() -> list[str]:
    """The two header lines of the encoder's per-step table (the paper's Table 4 with real bits)."""
    return [_row(_STEP_COLUMNS), "|" + "|".join("-" * (w + 2) for w in _STEP_WIDTHS) + "|"]


def step_table_row(r) -> str:
    """One :class:`~ddpm_codec.codec.api.StepRecord` as a row of that table."""
    return _row((r.reverse_time, r.t, f"{r.kl_bits:.1f}", f"{r.actual_bits:.0f}", f"{r.cum_bpd:.4f}",
                 f"{r.rmse:.2f}", f"{r.psnr:.2f}", r.chunks))


def portability_note(settings, lossless: bool) -> str | None:
    """The one-line note ``encode`` prints for a lossless file in float arithmetic (None otherwise):
    such a file decodes only where the same float kernels run."""
    if settings.arithmetic.exact or not lossless:
        return None
    from .profiles import profile_of

    pid = profile_of(settings)
    name = f"profile {pid}" if pid is not None else "these settings"
    return (f"{name} uses float arithmetic: this file decodes only where the same kernels run (same CPU "
            "kernels and library builds); the default, exact arithmetic, decodes on any machine")
