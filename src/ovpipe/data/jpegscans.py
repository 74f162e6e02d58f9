"""A progressive JPEG without the scans a 1/8-scale decode never reads.

At 1/8 scale libjpeg's IDCT of an 8×8 block is its DC coefficient alone, yet a progressive file is
decoded scan by scan in full: the AC scans, most of the bytes, are entropy-decoded and then unused
(a 3 MP progressive photo takes 4× as long as a baseline one). In a progressive file the DC
coefficients come in scans of their own (Ss = Se = 0), and each AC scan holds one component, so the
file can lose the AC scans of every component whose IDCT at 1/8 is 1×1 and decode to the same pixels.

Two rules of libjpeg-turbo keep this exact (tests compare the pixels for every sampling layout):
- a component subsampled in both directions (4:2:0 chroma) is decoded with a 2×2 IDCT at 1/8 scale
  (libjpeg scales chroma by the IDCT rather than by upsampling), which reads AC coefficients: all its
  scans are kept;
- block smoothing rewrites the DC of a component none of whose first nine AC coefficients arrived,
  so each pruned component keeps its first AC scan (a first pass, decodable alone; in common scan
  scripts the small 1–5 band). Its estimates of missing AC coefficients are never read at 1×1.

Anything but a cleanly structured SOF2 file (through EOI) is left as it is, so truncated or damaged
files go to the decoder unchanged and are rejected with its reasons.
"""
from __future__ import annotations

import re

SOF2, SOS, EOI, SOI = 0xC2, 0xDA, 0xD9, 0xD8
SMOOTHED_COEFS = 9  # libjpeg's block smoothing looks at zigzag coefficients 1..9
_MARKER_IN_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7]")  # stuffed FF00 and restart markers stay in the scan
_NO_LENGTH = set(range(0xD0, 0xD8)) | {0x01}


def dc_scans_only(data: bytes) -> bytes | None:
    """`data` keeping every segment but the AC scans, or None when it is not a well-formed
    progressive (SOF2) JPEG, or has no AC scan to drop."""
    if data[:2] != b"\xff\xd8":
        return None
    out, pos, n, dropped = [data[:2]], 2, len(data), False
    one_by_one: dict[int, bool] | None = None  # component id -> its IDCT at 1/8 is 1×1
    kept_ac: set[int] = set()
    while True:
        if pos + 1 >= n or data[pos] != 0xFF:
            return None
        while pos + 1 < n and data[pos + 1] == 0xFF:  # fill bytes before a marker
            pos += 1
        if pos + 1 >= n:
            return None
        marker = data[pos + 1]
        if marker == EOI:
            out.append(b"\xff\xd9")
            break
        if marker in _NO_LENGTH or marker == SOI:
            return None
        if pos + 4 > n or pos + 5 >= n:
            return None
        end = pos + 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
        if end > n or end < pos + 4:
            return None
        if marker in (0xC0, 0xC1, 0xC3) or 0xC5 <= marker <= 0xCF and marker not in (0xC8, 0xCC):
            return None  # baseline, lossless, hierarchical or arithmetic: nothing to drop here
        if marker == SOF2:
            one_by_one = _one_by_one(data[pos + 4:end])
            if one_by_one is None:
                return None
        if marker != SOS:
            out.append(data[pos:end])
            pos = end
            continue
        if one_by_one is None:
            return None
        ns = data[pos + 4]
        if end != pos + 2 + 6 + 2 * ns or not 1 <= ns <= 4:
            return None
        component, ss, ah = data[pos + 5], data[pos + 5 + 2 * ns], data[pos + 7 + 2 * ns] >> 4
        found = _MARKER_IN_SCAN.search(data, end)
        if found is None:
            return None  # no marker after the scan: the file is cut short
        if ss == 0 or not one_by_one.get(component, False):
            keep = True
        elif component not in kept_ac and ss <= SMOOTHED_COEFS and ah == 0 and ns == 1:
            keep = True
            kept_ac.add(component)
        else:
            keep = False
        if keep:
            out.append(data[pos:found.start()])
        else:
            dropped = True
        pos = found.start()
    if not dropped or not kept_ac >= {c for c, one in one_by_one.items() if one}:
        return None  # nothing to drop, or a component would lose its DC to block smoothing
    return b"".join(out)


def _one_by_one(frame: bytes) -> dict[int, bool] | None:
    """{component id: IDCT at 1/8 scale is 1×1} from a SOF payload (P, Y, X, Nf, [C, HV, Tq]×Nf):
    libjpeg-turbo doubles a component's IDCT size while its sampling is half the maximum in both
    directions (jdmaster's output dimensions)."""
    if len(frame) < 6 or len(frame) != 6 + 3 * frame[5]:
        return None
    comps = {frame[6 + 3 * i]: (frame[7 + 3 * i] >> 4, frame[7 + 3 * i] & 15) for i in range(frame[5])}
    if not comps or any(h == 0 or v == 0 for h, v in comps.values()):
        return None
    hmax, vmax = max(h for h, _ in comps.values()), max(v for _, v in comps.values())
    return {c: not (hmax % (2 * h) == 0 and vmax % (2 * v) == 0) for c, (h, v) in comps.items()}
