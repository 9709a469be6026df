"""Contact sheets: a grid of renders with a title, labelled columns (what changed) and labelled rows (prompt and
seed), drawn with Pillow. Cells keep the render's pixels: small renders are enlarged by a whole factor with
nearest-neighbour (so every render pixel stays one colour block), large ones are reduced to `MAX_CELL`.
A cell that could not be rendered is a grey box that says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MIN_CELL = 160
MAX_CELL = 384
MARGIN = 16
GAP = 6
ROW_LABEL_W = 240
TITLE_PX, LABEL_PX, NOTE_PX = 20, 13, 12
BACKGROUND, INK, MUTED, FAILED = (255, 255, 255), (20, 20, 20), (90, 90, 90), (215, 215, 215)


@dataclass
class Sheet:
    """What one contact sheet shows. `cells[r][c]` is a PIL image or None (that render failed)."""

    title: str
    subtitle: str
    columns: list[str]
    rows: list[str]
    cells: list[list[Any]]
    column_notes: list[str] = field(default_factory=list)  # one line under each column label (e.g. the change)


@dataclass(frozen=True)
class Layout:
    """Where things are on the composed sheet (for tests and for anyone cutting cells out again)."""

    width: int
    height: int
    cell: int
    origin_x: int  # left edge of column 0
    origin_y: int  # top edge of row 0

    def box(self, row: int, col: int) -> tuple[int, int, int, int]:
        x = self.origin_x + col * (self.cell + GAP)
        y = self.origin_y + row * (self.cell + GAP)
        return (x, y, x + self.cell, y + self.cell)


def cell_size(render_px: int) -> int:
    if render_px >= MIN_CELL:
        return min(render_px, MAX_CELL)
    return render_px * -(-MIN_CELL // render_px)  # the smallest whole multiple at least MIN_CELL


def fit_cell(image: Any, size: int) -> Any:
    """The render scaled into a `size` square: whole-factor nearest-neighbour up, Lanczos down."""
    from PIL import Image

    img = image.convert("RGB")
    if img.size == (size, size):
        return img
    method = Image.Resampling.NEAREST if img.width < size else Image.Resampling.LANCZOS
    return img.resize((size, size), method)


def _font(px: int, *, bold: bool = False) -> Any:
    """DejaVu Sans (it ships with matplotlib, our plotting library, and has every glyph German and the labels
    need: ä, ß, ×, –); Pillow's built-in font when matplotlib is missing (it lacks some of those glyphs)."""
    from PIL import ImageFont

    try:
        import matplotlib

        name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
        return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name), px)
    except (ImportError, OSError):
        return ImageFont.load_default(size=px)


def _pieces(word: str, font: Any, width: int) -> list[str]:
    """A word too wide for a line (a file name) cut into pieces that fit."""
    out, current = [], ""
    for ch in word:
        if current and font.getlength(current + ch) > width:
            out.append(current)
            current = ""
        current += ch
    return [*out, current] if current else out


def wrap(text: str, font: Any, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap to `width` pixels; the last line ends in '…' when text is left over."""
    lines: list[str] = []
    words = [piece for word in text.split() for piece in _pieces(word, font, width)]
    current = ""
    for i, word in enumerate(words):
        trial = f"{current} {word}".strip()
        if font.getlength(trial) <= width or not current:
            current = trial
            continue
        lines.append(current)
        current = word
        if len(lines) == max_lines:
            lines[-1] = _ellipsis(" ".join([lines[-1], *words[i:]]), font, width)
            return lines
    if current:
        lines.append(current)
    if len(lines) > max_lines:
        lines = lines[: max_lines - 1] + [_ellipsis(" ".join(lines[max_lines - 1 :]), font, width)]
    return [_ellipsis(line, font, width) if font.getlength(line) > width else line for line in lines]


def _ellipsis(text: str, font: Any, width: int) -> str:
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


def compose(sheet: Sheet, render_px: int) -> tuple[Any, Layout]:
    """The sheet as one RGB image, and where its cells are."""
    from PIL import Image, ImageDraw

    cell = cell_size(render_px)
    n_rows, n_cols = len(sheet.rows), len(sheet.columns)
    title_f, label_f, note_f = _font(TITLE_PX, bold=True), _font(LABEL_PX, bold=True), _font(NOTE_PX)
    col_lines = [wrap(c, label_f, cell, 3) for c in sheet.columns]
    header_h = max((len(lines) for lines in col_lines), default=1) * (LABEL_PX + 4) + (NOTE_PX + 6) + 8
    grid_w = n_cols * cell + max(0, n_cols - 1) * GAP
    width = MARGIN * 2 + ROW_LABEL_W + GAP + grid_w
    title_lines = wrap(sheet.title, title_f, width - 2 * MARGIN, 2)
    sub_lines = wrap(sheet.subtitle, note_f, width - 2 * MARGIN, 3) if sheet.subtitle else []
    top = MARGIN + len(title_lines) * (TITLE_PX + 6) + 2 + len(sub_lines) * (NOTE_PX + 4) + 8
    origin_x, origin_y = MARGIN + ROW_LABEL_W + GAP, top + header_h
    height = origin_y + n_rows * cell + max(0, n_rows - 1) * GAP + MARGIN
    img = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(img)
    y = MARGIN
    for line in title_lines:
        draw.text((MARGIN, y), line, font=title_f, fill=INK)
        y += TITLE_PX + 6
    y += 2
    for line in sub_lines:
        draw.text((MARGIN, y), line, font=note_f, fill=MUTED)
        y += NOTE_PX + 4
    layout = Layout(width, height, cell, origin_x, origin_y)
    for c, lines in enumerate(col_lines):
        x = origin_x + c * (cell + GAP)
        ly = top
        for line in lines:
            draw.text((x, ly), line, font=label_f, fill=INK)
            ly += LABEL_PX + 4
        note = sheet.column_notes[c] if c < len(sheet.column_notes) else ""
        if note:
            draw.text((x, ly + 2), _fit(note, note_f, cell), font=note_f, fill=MUTED)
    for r, label in enumerate(sheet.rows):
        ry = origin_y + r * (cell + GAP)
        max_lines = max(1, cell // (LABEL_PX + 4))
        for i, line in enumerate(wrap(label, label_f, ROW_LABEL_W - 8, max_lines)):
            draw.text((MARGIN, ry + i * (LABEL_PX + 4)), line, font=label_f, fill=INK)
        for c in range(n_cols):
            box = layout.box(r, c)
            image = sheet.cells[r][c] if c < len(sheet.cells[r]) else None
            if image is None:
                draw.rectangle(box, fill=FAILED)
                draw.text((box[0] + 8, box[1] + 8), "not rendered", font=note_f, fill=MUTED)
            else:
                img.paste(fit_cell(image, cell), box[:2])
    return img, layout


def _fit(text: str, font: Any, width: int) -> str:
    return text if font.getlength(text) <= width else _ellipsis(text, font, width)


def difference_image(a: Any, b: Any, *, gain: float = 4.0) -> Any:
    """|a - b| per pixel, multiplied by `gain` (clipped) so small changes become visible; black = unchanged."""
    import numpy as np
    from PIL import Image

    x = np.asarray(a.convert("RGB"), dtype=np.int16)
    y = np.asarray(b.convert("RGB"), dtype=np.int16)
    diff = np.clip(np.abs(x - y) * gain, 0, 255).astype(np.uint8)
    return Image.fromarray(diff, "RGB")
