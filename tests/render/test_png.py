from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lit_explain.render import encode_png, save_png, to_hwc_uint8


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def test_png_round_trip_tensor(device: torch.device) -> None:
    img = (torch.rand(3, 20, 30, device=device) * 255).to(torch.uint8)
    decoded = _decode(encode_png(img))
    assert decoded.shape == (20, 30, 3)
    assert np.array_equal(decoded, img.permute(1, 2, 0).cpu().numpy())


@pytest.mark.parametrize(
    ("image", "shape"),
    [
        (torch.rand(1, 3, 8, 9, dtype=torch.float64, requires_grad=True), (8, 9, 3)),
        (torch.rand(1, 8, 9, dtype=torch.float16), (8, 9)),
        (torch.rand(8, 9), (8, 9)),
        (torch.rand(4, 8, 9), (8, 9, 4)),
        (np.zeros((8, 9, 3), dtype=np.uint8), (8, 9, 3)),
        (np.ones((8, 9), dtype=np.float32), (8, 9)),
        (Image.new("RGB", (9, 8)), (8, 9, 3)),
    ],
)
def test_png_accepts_common_layouts(image: object, shape: tuple[int, ...]) -> None:
    assert _decode(encode_png(image, compress_level=1)).shape == shape


def test_float_images_are_rounded() -> None:
    assert to_hwc_uint8(torch.full((3, 2, 2), 0.5))[0, 0].tolist() == [128, 128, 128]


def test_png_rejects_batches() -> None:
    with pytest.raises(ValueError, match="panel_grid"):
        encode_png(torch.rand(2, 3, 8, 8))


def test_save_png_atomic_and_refuses_overwrite(tmp_path: Path) -> None:
    dest = tmp_path / "sub" / "grid.png"
    first = torch.zeros(3, 4, 4)
    assert save_png(dest, first) == dest
    assert _decode(dest.read_bytes()).shape == (4, 4, 3)
    with pytest.raises(FileExistsError, match=r"grid\.png.*overwrite=True"):
        save_png(dest, torch.ones(3, 4, 4))
    assert _decode(dest.read_bytes()).max() == 0  # untouched
    save_png(str(dest), torch.ones(3, 4, 4), overwrite=True)
    assert _decode(dest.read_bytes()).min() == 255
    assert sorted(p.name for p in dest.parent.iterdir()) == ["grid.png"]  # no temp files left


def test_save_png_permissions_follow_umask(tmp_path: Path) -> None:
    dest = save_png(tmp_path / "a.png", torch.zeros(3, 2, 2))
    umask = os.umask(0)
    os.umask(umask)
    assert dest.stat().st_mode & 0o777 == 0o666 & ~umask


def test_save_png_lost_race_keeps_other_file_and_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "race.png"
    real_link = os.link

    def link_after_competitor(src: str, dst: str) -> None:
        Path(dst).write_bytes(b"competitor")  # another writer wins between the check and the move
        real_link(src, dst)

    monkeypatch.setattr(os, "link", link_after_competitor)
    with pytest.raises(FileExistsError):
        save_png(dest, torch.zeros(3, 2, 2))
    assert dest.read_bytes() == b"competitor"
    assert [p.name for p in tmp_path.iterdir()] == ["race.png"]


def test_save_png_bad_image_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        save_png(tmp_path / "bad.png", torch.rand(2, 3, 4, 4))
    assert list(tmp_path.iterdir()) == []
