"""Captions are shortened to fit their cell without ever cutting a number: paths first, then other words,
then numbers rounded, and only then whole words dropped."""

from __future__ import annotations

import doctest
import re

import pytest
import torch

from lit_explain.render import _text
from lit_explain.render._text import ELLIPSIS, fit_text, font, is_number, round_number

WORST = "worst 12 · plants/train/Lanceolate/IMG_20240501_123456.jpg · process 1"
PREDICTION = "true: Lanceolate · pred: Sagittate (confidence 0.53) · loss 1.2345"
NUMBER = re.compile(r"\d+(?:\.\d+)?")


def _allowed(text: str) -> set[str]:
    """The numbers of ``text`` and their roundings to 1.. decimals."""
    out = set()
    for n in NUMBER.findall(text):
        out.add(n)
        if "." in n:
            out |= {f"{float(n):.{d}f}" for d in range(1, len(n.split(".")[1]))}
    return out


@pytest.mark.parametrize("text", [WORST, PREDICTION])
@pytest.mark.parametrize("width", range(20, 520, 15))
def test_no_number_is_ever_cut(text, width):
    fnt = font(13)
    line = fit_text(text, fnt, width)
    assert fnt.getlength(line) <= width
    path_words = {w for w in text.split() if "/" in w}
    for word in line.split():
        if any(word.startswith(p[:1]) and word.endswith(p[-2:]) for p in path_words):
            continue  # a shortened path: its digits are part of a name, not a number
        digits = NUMBER.findall(word)
        assert not (digits and word.endswith(ELLIPSIS)), f"{word!r} cut mid-number in {line!r}"
        assert set(digits) <= _allowed(text), f"{word!r} is not a whole number of {text!r}: {line!r}"


def test_the_path_is_shortened_first_and_keeps_the_file_name():
    fnt = font(13)
    width = fnt.getlength(WORST) * 0.8
    line = fit_text(WORST, fnt, width)
    assert line.startswith("worst 12 · ") and line.endswith(" · process 1"), line
    assert ELLIPSIS in line and "123456.jpg" in line


def test_the_loss_stays_whole_where_words_are_cut():
    fnt = font(13)
    line = fit_text(PREDICTION, fnt, fnt.getlength(PREDICTION) * 0.7)
    assert line.endswith(" 1.2345") and "(c" in line and " 0.53)" in line, line


def test_numbers_are_rounded_before_any_word_is_dropped():
    fnt = font(13)
    shortest = fit_text(PREDICTION, fnt, 1)  # nothing fits
    assert shortest in ("", ELLIPSIS)
    widths = [fnt.getlength(fit_text(PREDICTION, fnt, w)) for w in range(40, 400, 5)]
    rounded = [fit_text(PREDICTION, fnt, w) for w in range(40, 400, 5)]
    assert any(line.endswith(" 1.2") for line in rounded)
    assert widths == sorted(widths)


def test_helpers():
    assert is_number("(0.53)") and is_number("1e-05") and is_number("93%") and not is_number("a1")
    assert round_number("1.2345", 2) == "1.23" and round_number("(0.531)", 1) == "(0.5)"
    assert doctest.testmod(_text, optionflags=doctest.ELLIPSIS).failed == 0


def test_worst_sample_pages_draw_the_loss_whole(monkeypatch):
    # The worst-samples caption as WorstSamples writes it, for a long path and long class names.
    from PIL import ImageDraw

    from lit_explain.callbacks.captions import prediction_line
    from lit_explain.render.pages import render_pages

    drawn: list[str] = []
    real = ImageDraw.ImageDraw.text
    monkeypatch.setattr(
        ImageDraw.ImageDraw,
        "text",
        lambda self, xy, text, *a, **k: (drawn.append(text), real(self, xy, text, *a, **k)),
    )
    names = ["Lanceolate_with_a_long_name", "Sagittate_with_a_long_name"]
    source = "plants/val/Lanceolate_with_a_long_name/IMG_20240501_123456.jpg"
    caption = f"worst 1 · {source}\n{prediction_line(names, 0, 1, 0.8765)} · loss 1.2345"
    maps = torch.rand(1, 1, 32, 32)
    render_pages(torch.rand(1, 3, 32, 32), maps, maps, None, [caption], torch.tensor([False]), min_cell=64)
    (second,) = [t for t in drawn if "·" in t and "worst" not in t]  # the caption's second line
    assert re.search(r"(?<![\d.])1\.23?4?5?$", second), drawn  # the loss ends the line, whole or rounded
    assert "0.88" in second or "0.9" in second, drawn


def _drawn_by_pil(strips, width, height, font_size, background, line_height=None):
    """draw_strips as ``ImageDraw.text`` draws every line (the reference the cached lines must match)."""
    from PIL import Image, ImageDraw

    canvas = Image.new("RGB", (width, height * len(strips)), background)
    draw, fnt = ImageDraw.Draw(canvas), font(font_size)
    band = line_height or height
    _, top, _, bottom = fnt.getbbox("Ag|")
    y_offset = (band - (bottom - top)) / 2 - top
    for s, boxes in enumerate(strips):
        for box in boxes:
            for i, line in enumerate(box.text.split("\n")):
                text = fit_text(line, fnt, box.width - 4)
                if not text:
                    continue
                x = box.x + 2
                if box.align == "center":
                    x = box.x + (box.width - fnt.getlength(text)) / 2
                elif box.align == "right":
                    x = box.x + box.width - 2 - fnt.getlength(text)
                y = s * height + i * band + y_offset
                draw.text((round(x), round(y)), text, fill=box.color, font=fnt)
    return torch.from_numpy(__import__("numpy").array(canvas)).reshape(len(strips), height, width, 3)


def test_cached_caption_lines_draw_the_pixels_pil_draws() -> None:
    strips = [
        [
            _text.TextBox(f"probe {n} · idx {n * 37}\n{PREDICTION}", 0, 160, color=(20 * n, 0, 200)),
            _text.TextBox(WORST if n % 2 else "jgpq ✓ 0.93", 160, 120, align="center"),
            _text.TextBox("1.00", 280, 40, color=(255, 255, 255), align="right"),
        ]
        for n in range(6)
    ]
    for _ in range(3):  # drawn, then a mask built on the second sight, then the mask reused
        for size, height, line in ((11, 30, 15), (16, 18, None)):
            got = _text.draw_strips(strips, 320, height, size, (240, 240, 240), line_height=line)
            want = _drawn_by_pil(strips, 320, height, size, (240, 240, 240), line_height=line)
            assert torch.equal(torch.from_numpy(got), want)


def test_caption_masks_are_kept_for_recurring_lines_only_and_bounded() -> None:
    masks = _text._LineMasks(capacity=2)
    assert masks.get("once", 11) is None  # first sight: drawn by PIL, nothing built
    assert masks.get("once", 11) is not None  # it recurs: built
    assert masks.get("once", 11) is masks.get("once", 11)  # then reused
    for line in ("a", "b", "c"):
        masks.get(line, 11)
        masks.get(line, 11)
    assert len(masks.masks) == 2 and len(masks.seen) == 2
