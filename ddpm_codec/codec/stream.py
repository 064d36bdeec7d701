"""The segment stream: all coding steps (and, in format version 2, x_0) in ONE range-coded stream,
cut into segments at step boundaries so that a file cut at a segment boundary still decodes."""
from __future__ import annotations

import math

import numpy as np

from ..coding import container, rcc
from .x0 import ContextX0Code, SideX0Code

SEGMENT_GROWTH = 2.5   # each segment at least this many times the previous one (encoder policy; 1.5 until
                       # profile 5: 4.75 segments per lossless CIFAR image, 2.5 gives 3.4 and 3.1 bytes less)


class StepStream:
    """All coding steps in ONE range-coded stream, cut into segments at step boundaries.

    A segment ends after the step where the stream has grown since the last cut by
    ``min_segment_bytes`` and by ``SEGMENT_GROWTH`` times the previous segment: fine steps at low
    rates (previews), few table entries in all; and the last segment holds at least ``min_segment_bytes``
    too (else it joins the one before: a lossy file ending a few bytes after a cut). Each cut is placed at the shortest prefix of the stream from which the decoder,
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
        self.x0: SideX0Code | ContextX0Code | None = None   # coded after the last step (format version 2)
        self.code_bits = 0.0        # the steps' model code lengths so far (counts and indices)
        self.cut_code: list[float] = []   # code_bits at each cut

    def num_bits(self) -> int:
        return int(self.enc.num_bits())

    def _kept(self, cuts: list, end: float, at) -> list:
        """The cuts before the last step written, less the last of them if the segment after it would hold
        fewer than ``min_segment_bytes``: a short tail segment costs its table entry (and, in format 3 or
        4, the header CRC-8 and format 4's implied length: 3-4 bytes) for a preview a few bytes earlier.
        ``at(cut)``: where a cut lies on the scale of ``end`` (stream bits, or code bits)."""
        kept = [c for c in cuts if c[0][0] < len(self.written)]
        if kept and end - at(kept[-1]) < self.min_bits:
            kept.pop()
        return kept

    def prefix_table(self) -> list[tuple[int, int]]:
        """The segment table ``(steps, bytes)`` of a file cut after the last step written, estimated from
        the steps' model code lengths: a cut after ``c`` bits of code at byte ``ceil(c / 8)`` (the range
        coder's rounding takes about what the rounded-up last byte saves; ``benchmarks/overhead.py``
        compares the estimate with the files: 0 to +1 byte)."""
        kept = self._kept(list(zip(self.cuts, self.cut_code)), self.code_bits, lambda c: c[1])
        ends = [(steps, c) for (steps, _), c in kept]
        ends.append((len(self.written), self.code_bits))
        table, prev_steps, prev_pos = [], 0, 0
        for steps, c in ends:
            pos = max(prev_pos, math.ceil(c / 8))
            table.append((steps - prev_steps, pos - prev_pos))
            prev_steps, prev_pos = steps, pos
        return table

    def write(self, code: "rcc.StepCode", centres, code_bits: float = 0.0) -> None:
        """Appends one step's code; ``code_bits``: its model code length (for :meth:`prefix_table`)."""
        rcc.write_step(self.enc, code, self.cfg, centres)
        self.written.append((code, centres))
        self.code_bits += code_bits

    def write_x0(self, code: "SideX0Code | ContextX0Code") -> None:
        """x_0 after the last step (format version 2): ``code`` writes itself and checks read-backs."""
        code.write(self.enc)
        self.x0 = code

    def maybe_end_segment(self) -> None:
        size = self.num_bits() - self.last_cut_bits
        if size >= max(self.min_bits, SEGMENT_GROWTH * self.last_size):
            self.cuts.append((len(self.written), self.num_bits()))
            self.cut_code.append(self.code_bits)
            self.last_cut_bits, self.last_size = self.num_bits(), size

    def segments(self) -> list[container.Segment]:
        if not self.written:
            return []
        # big-endian words: a cut inside a word zeroes its least significant bytes (byte-exact cuts)
        data = stream_bytes(self.enc.get_compressed())
        data = data[: self._prefix_len(data, len(self.written), len(data) - 4, x0=self.x0 is not None)]  # unread tail
        data = self._round_up_end(data)
        out, start, steps_before = [], 0, 0
        for (steps, bits), _ in self._kept([(c, None) for c in self.cuts], 8 * len(data), lambda c: c[0][1]):
            end = self._prefix_len(data, steps, max(start, bits // 8 - 4))
            out.append(container.Segment(num_steps=steps - steps_before, payload=data[start:end]))
            start, steps_before = end, steps
        out.append(container.Segment(num_steps=len(self.written) - steps_before, payload=data[start:]))
        return out

    def _prefix_len(self, data: bytes, steps: int, lo: int, x0: bool = False) -> int:
        """The smallest ``n >= lo`` whose prefix ``data[:n]`` reads back (``len(data)`` always does).

        Reading back is monotone in ``n``: the stream is one big-endian number, a prefix padded with
        zeros is that number truncated, and ``n + 1`` bytes give a value between ``n`` bytes' and the
        whole stream's; both lie in the (convex) interval of every symbol decoded right, so that
        value does too. So the search may run either way and finds the same ``n``: upward from ``lo``
        for the cuts between steps (the answer sits a few bytes above ``lo``), downward from the end
        for the last cut, whose trials decode x_0 too (~0.1-0.3 s each) and whose answer is almost
        always the stream's last byte or the one before (1-2 trials instead of 4)."""
        lo = max(0, lo)
        if not x0:
            for n in range(lo, len(data)):
                if self._reads_back(data[:n], steps, x0):
                    return n
            return len(data)
        n = len(data)
        while n - 1 >= lo and self._reads_back(data[:n - 1], steps, x0):
            n -= 1
        return n

    def _round_up_end(self, data: bytes) -> bytes:
        """The stream's end one byte shorter where that still reads back: the shortest prefix of the
        coder's output is its value rounded DOWN to whole bytes, and needs a byte boundary between the
        final interval's low end and that value; rounded UP (the last kept byte + 1) it needs one
        anywhere in the interval. Tried while it reads back (every step and x_0, as the cut does), only
        where the +1 carries into no earlier byte (those may belong to earlier segments)."""
        while len(data) >= 2 and data[-2] != 0xFF:
            shorter = data[:-2] + bytes([data[-2] + 1])
            if not self._reads_back(shorter, len(self.written), self.x0 is not None):
                break
            data = shorter
        return data

    def _reads_back(self, data: bytes, steps: int, x0: bool = False) -> bool:
        import constriction

        try:
            dec = constriction.stream.queue.RangeDecoder(stream_words(data))
            for code, centres in self.written[:steps]:
                got = rcc.read_step(dec, self.batch, self.dim, self.cfg, centres)
                if not (np.array_equal(got.num_chunks, code.num_chunks)
                        and all(np.array_equal(a, b) for a, b in zip(got.indices, code.indices))):
                    return False
            if x0 and not self.x0.reads_back(dec):
                return False
        except (ValueError, RuntimeError):
            return False
        return True


def stream_bytes(words: np.ndarray) -> bytes:
    """A one-stream file's step stream: the range coder's 32-bit words, big-endian."""
    return np.asarray(words, dtype=np.uint32).astype(">u4").tobytes()


def stream_words(data: bytes) -> np.ndarray:
    """Inverse of :func:`stream_bytes` for any prefix: missing low-order bytes read as zero."""
    return np.frombuffer(pad4(data), dtype=">u4").astype(np.uint32)


def pad4(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 4)
