"""Near-copies: does one image look like another one re-encoded, resized or slightly cropped?

Each image gets a `Likeness` from a 64x64 YCbCr thumbnail:
  layout  8x8 luminance means of VIEWS views of the picture: the whole of it and slightly cropped views
          (each axis spans its full length, or 98/95/92/89/86% of it at the start, centre or end), each
          centred and scaled to unit length, so brightness, contrast, JPEG noise and the size do not count;
  colour  2x2 YCbCr means of the same views, in grey levels (0-255);
  flat    the whole picture's 8x8 luminance varies by less than FLAT_STD grey levels.

Two images are near-copies when the whole of one matches a view of the other (or the reverse) in layout
(correlation >= LAYOUT_MIN) *and*, in that view, in colour (mean distance of the four colour cells <=
COLOUR_MAX); two flat images are near-copies when their colours are that close. A layout match alone is
not enough: the grey difference hash this replaces called every colourway of one cloth (indigo, red) a
copy, and any two flat images the same picture.

The thresholds come from synthetic sets (tests/test_dataset_likeness.py builds them): resist-dyed cloth in
indigo and red and shaded scenes, 12 of each, copied 8 ways (JPEG quality 40; 1/2 and 1/5 size; cropped 3 or 5%
a side, 6% off one side, 4% off two sides and re-encoded; cropped, shrunk and re-encoded). The 288 copies
scored a layout of at least 0.82 and a colour distance of at most 2.8; different cloths of one dye at most
0.52 in layout; colourways of one cloth at least 52 in colour; flat images of different colours at least
12; different scenes with a layout above 0.8 at least 31 in colour.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

THUMB = 64
SIDE = 8  # layout cells per axis
SPANS: tuple[tuple[float, float], ...] = ((0.0, 1.0),) + tuple(
    (o * (1 - s), o * (1 - s) + s) for s in (0.98, 0.95, 0.92, 0.89, 0.86) for o in (0.0, 0.5, 1.0)
)
VIEWS = len(SPANS) ** 2
LAYOUT_MIN = 0.7
COLOUR_MAX = 10.0
FLAT_STD = 2.0
_ROW_CHUNK = 16  # images per block of the pairwise comparison: its memory is 16 * VIEWS * n floats


def _cell_index(cells: int) -> tuple[np.ndarray, np.ndarray]:
    """Where to read every cell of every view in a flattened (THUMB + 1)^2 summed-area table: the four corner
    indices, (4, VIEWS * cells * cells), and the cells' areas in pixels. Computed once; a fingerprint is then
    four gathers."""
    edges = np.array([[round((a + (b - a) * i / cells) * THUMB) for i in range(cells + 1)] for a, b in SPANS])
    y0, y1 = edges[:, None, :-1, None], edges[:, None, 1:, None]  # views by (y span, x span), then cells
    x0, x1 = edges[None, :, None, :-1], edges[None, :, None, 1:]
    width = THUMB + 1
    corners = [(y1 * width + x1), (y0 * width + x1), (y1 * width + x0), (y0 * width + x0)]
    index = np.stack([np.broadcast_to(c, (len(SPANS), len(SPANS), cells, cells)).ravel() for c in corners])
    return index, ((y1 - y0) * (x1 - x0)).ravel().astype(np.float32)


_LAYOUT_INDEX, _LAYOUT_AREA = _cell_index(SIDE)
_COLOUR_INDEX, _COLOUR_AREA = _cell_index(2)


def _cell_means(table: np.ndarray, index: np.ndarray, area: np.ndarray) -> np.ndarray:
    """Means of the cells `index` names, from a flattened summed-area table (pixels, channels)."""
    sums = table[index[0]] - table[index[1]] - table[index[2]] + table[index[3]]
    return sums / area[:, None]


@dataclass(frozen=True)
class Likeness:
    """An image's near-copy fingerprint (small enough to send back from a worker process)."""

    layout: np.ndarray  # (VIEWS, SIDE * SIDE) float16, unit length (zeros for a flat view)
    colour: np.ndarray  # (VIEWS, 12) float32: 2x2 cells x (Y, Cb, Cr)
    flat: bool


def likeness(img: Image.Image) -> Likeness:
    """The fingerprint of an RGB image (any size; large ones are reduced first, which is cheap)."""
    factor = min(img.width // THUMB, img.height // THUMB)
    if factor > 1:
        img = img.reduce(factor)
    ycc = np.asarray(img.resize((THUMB, THUMB), Image.Resampling.BOX).convert("YCbCr"), dtype=np.float32)
    table = np.zeros((THUMB + 1, THUMB + 1, 3), dtype=np.float32)  # sums below 2**20: exact in float32
    table[1:, 1:] = ycc.cumsum(axis=0).cumsum(axis=1)
    sums = table.reshape(-1, 3)
    layout = _cell_means(sums[:, :1], _LAYOUT_INDEX, _LAYOUT_AREA).reshape(VIEWS, SIDE * SIDE)
    colour = _cell_means(sums, _COLOUR_INDEX, _COLOUR_AREA).reshape(VIEWS, 12)
    flat = bool(layout[0].std() < FLAT_STD)
    layout = layout - layout.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(layout, axis=1, keepdims=True)
    layout = np.divide(layout, norm, out=np.zeros_like(layout), where=norm > 1e-6)
    return Likeness(layout.astype(np.float16), colour, flat)


@dataclass(frozen=True)
class NearCopy:
    first: int  # index into the list given to `near_copies`
    second: int
    layout: float  # correlation of the best-matching view (1.0 for two flat images)
    colour: float  # mean colour-cell distance in that view, grey levels


def _colour_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm((a - b).reshape(4, 3), axis=1).mean())


def near_copies(prints: list[Likeness]) -> list[NearCopy]:
    """Every pair (i < j) of near-copies among `prints`, in order."""
    n = len(prints)
    if n < 2:
        return []
    views = np.stack([p.layout for p in prints]).astype(np.float32)  # (n, VIEWS, D)
    whole = views[:, 0, :]  # (n, D)
    best = np.empty((n, n), dtype=np.float32)  # best[i, j]: a view of i against the whole of j
    where = np.empty((n, n), dtype=np.int32)
    for start in range(0, n, _ROW_CHUNK):
        rows = views[start : start + _ROW_CHUNK]
        block = (rows.reshape(-1, rows.shape[2]) @ whole.T).reshape(len(rows), VIEWS, n)  # one 2-D product
        best[start : start + _ROW_CHUNK] = block.max(axis=1)
        where[start : start + _ROW_CHUNK] = block.argmax(axis=1)
    flat = np.array([p.flat for p in prints])
    both_flat = flat[:, None] & flat[None, :]
    either_flat = flat[:, None] | flat[None, :]
    candidates = np.triu(both_flat | (~either_flat & (np.maximum(best, best.T) >= LAYOUT_MIN)), k=1)
    found: list[NearCopy] = []
    for i, j in zip(*np.nonzero(candidates), strict=True):
        a, b = prints[i], prints[j]
        if both_flat[i, j]:
            layout, colour = 1.0, _colour_distance(a.colour[0], b.colour[0])
        elif best[i, j] >= best[j, i]:  # the better-aligned direction decides; its view is where colours count
            layout, colour = float(best[i, j]), _colour_distance(a.colour[where[i, j]], b.colour[0])
        else:
            layout, colour = float(best[j, i]), _colour_distance(b.colour[where[j, i]], a.colour[0])
        if colour <= COLOUR_MAX:
            found.append(NearCopy(int(i), int(j), round(layout, 3), round(colour, 1)))
    return found
