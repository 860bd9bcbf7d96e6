"""Image files -> pixels: every format and mode the `score` command accepts, EXIF orientation, bad files."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rewardtune.images import (
    DEFAULT_MAX_PIXELS,
    ImageFileError,
    discover_images,
    inspect_image,
    load_pixels,
    open_image,
    pil_to_tensor,
    to_pixel_list,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "images"
RED, BLUE = (200, 30, 10), (10, 40, 220)


def two_colour(w: int = 16, h: int = 12) -> Image.Image:
    """Left half RED, right half BLUE: flat areas survive lossy codecs, so tolerances stay meaningful."""
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 2] = RED
    a[:, w // 2:] = BLUE
    return Image.fromarray(a)


def rgb(t: torch.Tensor, y: int, x: int) -> tuple[int, int, int]:
    return tuple(int(round(v * 255)) for v in t[:, y, x].tolist())


def close(a, b, tol: int) -> bool:
    return all(abs(int(x) - int(y)) <= tol for x, y in zip(a, b, strict=True))


# ------------------------------------------------------------------------------------------------ formats
@pytest.mark.parametrize("fmt,suffix,tol", [("PNG", ".png", 0), ("BMP", ".bmp", 0), ("TIFF", ".tif", 0),
                                            ("WEBP", ".webp", 0), ("JPEG", ".jpg", 12), ("GIF", ".gif", 0)])
def test_formats_round_trip(tmp_path, fmt, suffix, tol):
    p = tmp_path / f"img{suffix}"
    kw = {"lossless": True} if fmt == "WEBP" else ({"quality": 95} if fmt == "JPEG" else {})
    two_colour().save(p, fmt, **kw)
    x = load_pixels(p)
    assert x.shape == (3, 12, 16) and x.dtype == torch.float32
    assert x.min() >= 0.0 and x.max() <= 1.0
    assert close(rgb(x, 6, 2), RED, tol) and close(rgb(x, 6, 13), BLUE, tol)
    assert inspect_image(p).format == fmt


def test_gif_first_frame(tmp_path):
    p = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert inspect_image(p).n_frames == 3
    assert rgb(load_pixels(p), 3, 3) == (255, 0, 0)


def test_animated_webp_first_frame(tmp_path):
    p = tmp_path / "anim.webp"
    frames = [Image.new("RGB", (8, 8), c) for c in ((0, 255, 0), (255, 0, 0))]
    frames[0].save(p, save_all=True, append_images=frames[1:], lossless=True, duration=50)
    assert rgb(load_pixels(p), 3, 3) == (0, 255, 0)


# --------------------------------------------------------------------------------------------------- modes
def test_rgba_composited_on_white(tmp_path):
    a = np.zeros((4, 3, 4), np.uint8)
    a[:, 0] = (0, 0, 0, 0)  # fully transparent black -> white
    a[:, 1] = (255, 0, 0, 255)  # opaque red stays red
    a[:, 2] = (0, 0, 0, 128)  # half-transparent black -> mid grey
    p = tmp_path / "rgba.png"
    Image.fromarray(a, "RGBA").save(p)
    x = load_pixels(p)
    assert rgb(x, 1, 0) == (255, 255, 255)
    assert rgb(x, 1, 1) == (255, 0, 0)
    assert close(rgb(x, 1, 2), (127, 127, 127), 1)


def test_la_composited_on_white(tmp_path):
    a = np.zeros((2, 2, 2), np.uint8)
    a[0, 0] = (10, 0)
    a[0, 1] = (10, 255)
    p = tmp_path / "la.png"
    Image.fromarray(a, "LA").save(p)
    x = load_pixels(p)
    assert rgb(x, 0, 0) == (255, 255, 255) and rgb(x, 0, 1) == (10, 10, 10)


def test_grayscale_l(tmp_path):
    p = tmp_path / "l.png"
    Image.fromarray(np.array([[0, 77, 255]], np.uint8), "L").save(p)
    x = load_pixels(p)
    assert x.shape == (3, 1, 3)
    assert [rgb(x, 0, i) for i in range(3)] == [(0, 0, 0), (77, 77, 77), (255, 255, 255)]


def test_bilevel_1(tmp_path):
    p = tmp_path / "one.png"
    Image.fromarray(np.array([[0, 255]], np.uint8), "L").convert("1").save(p)
    x = load_pixels(p)
    assert rgb(x, 0, 0) == (0, 0, 0) and rgb(x, 0, 1) == (255, 255, 255)


@pytest.mark.parametrize("suffix", [".png", ".gif"])
def test_palette_with_transparency(tmp_path, suffix):
    im = Image.new("P", (3, 1))
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    im.putdata([0, 1, 2])
    p = tmp_path / f"p{suffix}"
    im.save(p, transparency=0)  # index 0 (black) is transparent -> white
    assert Image.open(p).mode == "P"
    x = load_pixels(p)
    assert [rgb(x, 0, i) for i in range(3)] == [(255, 255, 255), (255, 0, 0), (0, 0, 255)]


def test_palette_without_transparency(tmp_path):
    im = Image.new("P", (2, 1))
    im.putpalette([0, 0, 0, 0, 200, 0] + [0] * (256 * 3 - 6))
    im.putdata([0, 1])
    p = tmp_path / "p.png"
    im.save(p)
    x = load_pixels(p)
    assert [rgb(x, 0, i) for i in range(2)] == [(0, 0, 0), (0, 200, 0)]


def test_sixteen_bit_grayscale(tmp_path):
    p = tmp_path / "g16.png"
    Image.fromarray(np.array([[0, 32896, 65535, 257 * 10]], np.uint16)).save(p)
    im = Image.open(p)
    assert im.mode.startswith("I")  # I;16 (or I on older Pillow)
    x = load_pixels(p)
    assert [rgb(x, 0, i)[0] for i in range(4)] == [0, 128, 255, 10]  # scaled from 16 bit, not clipped at 255


def test_sixteen_bit_modes_in_memory():
    for mode in ("I;16", "I;16B"):
        im = Image.new(mode, (2, 1))
        im.putpixel((0, 0), 65535)
        im.putpixel((1, 0), 257 * 100)
        x = pil_to_tensor(im)
        assert rgb(x, 0, 0) == (255, 255, 255) and rgb(x, 0, 1) == (100, 100, 100), mode
    f = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32), "F")
    assert [rgb(pil_to_tensor(f), 0, i)[0] for i in range(3)] == [0, 128, 255]


def test_cmyk_jpeg_and_tiff(tmp_path):
    im = Image.new("CMYK", (8, 8), (255, 0, 0, 0))  # pure cyan ink
    for suffix, tol in ((".jpg", 8), (".tif", 0)):
        p = tmp_path / f"cmyk{suffix}"
        im.save(p, quality=95) if suffix == ".jpg" else im.save(p)
        assert Image.open(p).mode == "CMYK"
        assert close(rgb(load_pixels(p), 4, 4), (0, 255, 255), tol), suffix


def test_exif_orientation_applied_by_default(tmp_path):
    base = two_colour(16, 12)  # left red, right blue, stored landscape
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    p = tmp_path / "rot.jpg"
    base.save(p, quality=95, exif=exif.tobytes())
    assert inspect_image(p).size == (12, 16)
    x = load_pixels(p)
    assert x.shape == (3, 16, 12)  # portrait, as a viewer shows it
    assert close(rgb(x, 2, 6), RED, 12) and close(rgb(x, 13, 6), BLUE, 12)  # left -> top after a CW turn
    y = load_pixels(p, exif_transpose=False)
    assert y.shape == (3, 12, 16) and inspect_image(p, exif_transpose=False).size == (16, 12)


def png_with_late_exif(path: Path, img: Image.Image, orientation: int) -> None:
    """A PNG whose eXIf chunk comes after the image data (legal; PIL writes it before)."""
    buf = io.BytesIO()
    img.save(buf, "PNG")
    data = buf.getvalue()
    exif = Image.Exif()
    exif[0x0112] = orientation
    payload = exif.tobytes()
    payload = payload[6:] if payload.startswith(b"Exif\x00\x00") else payload
    chunk = struct.pack(">I", len(payload)) + b"eXIf" + payload + struct.pack(">I", zlib.crc32(b"eXIf" + payload))
    path.write_bytes(data[:-12] + chunk + data[-12:])  # before IEND


def test_png_with_late_exif_is_rotated_once_decoded(tmp_path):
    p = tmp_path / "late.png"
    png_with_late_exif(p, two_colour(16, 12), 6)
    assert inspect_image(p).size == (16, 12)  # the header pass does not decode to find the tag
    x = load_pixels(p)
    assert x.shape == (3, 16, 12) and rgb(x, 2, 6) == RED and rgb(x, 13, 6) == BLUE


def test_real_photos():
    files = sorted(FIXTURES.glob("*.webp"))
    assert len(files) == 4
    xs = [load_pixels(f) for f in files]
    assert all(x.shape == (3, 512, 512) for x in xs)
    assert len({round(float(x.mean()), 4) for x in xs}) == 4  # four different pictures
    ref = np.asarray(Image.open(files[0]).convert("RGB"), np.float32) / 255.0
    assert np.array_equal(xs[0].permute(1, 2, 0).numpy(), ref)  # RGB files are passed through untouched


def test_to_pixel_list_mixes_paths_pil_and_tensors(tmp_path):
    p = tmp_path / "a.png"
    two_colour().save(p)
    t = torch.rand(2, 3, 5, 5)
    out = to_pixel_list([p, str(p), Image.open(p), t, t[0]])
    assert len(out) == 6
    assert torch.equal(out[0], out[1]) and torch.equal(out[0], out[2])
    assert torch.equal(out[3], t[0]) and torch.equal(out[5], t[0])
    with pytest.raises(ValueError):
        to_pixel_list(torch.rand(1, 4, 5, 5))


# ----------------------------------------------------------------------------------------------- bad files
def png_header_only(path: Path, w: int, h: int) -> None:
    """A valid PNG signature + IHDR claiming w x h, a tiny IDAT, IEND: what a decompression bomb looks like."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def test_bad_files_raise_image_file_error(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("this is not an image\n")
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    noise.save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    noise.save(tmp_path / "full.jpg")
    jdata = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(jdata[: len(jdata) // 3])
    png_header_only(tmp_path / "bomb.png", 100_000, 100_000)  # 10 GP: refused by the header check
    png_header_only(tmp_path / "big.png", 9000, 9000)  # 81 MP: above the default 67 MP limit
    expect = {"empty.png": "empty file", "text.png": "not an image", "truncated.png": "corrupt or truncated",
              "truncated.jpg": "corrupt or truncated", "bomb.png": "too large", "big.png": "too large",
              "missing.png": "not found"}
    for name, needle in expect.items():
        with pytest.raises(ImageFileError, match=needle):
            load_pixels(tmp_path / name)
    with pytest.raises(ImageFileError, match="directory"):
        load_pixels(tmp_path)
    # the header check never decodes: a 10-gigapixel claim is refused instantly, and the limit is adjustable
    with pytest.raises(ImageFileError, match="too large"):
        inspect_image(tmp_path / "bomb.png")
    assert inspect_image(tmp_path / "big.png", max_pixels=0).size == (9000, 9000)
    assert DEFAULT_MAX_PIXELS < 9000 * 9000
    with pytest.raises(ImageFileError, match="above the limit"):
        inspect_image(tmp_path / "full.png", max_pixels=64 * 63)
    with pytest.raises(ImageFileError, match="not found"):
        to_pixel_list([tmp_path / "missing.png"])


def test_open_image_returns_detached_copy(tmp_path):
    p = tmp_path / "a.png"
    two_colour().save(p)
    im = open_image(p)
    p.unlink()  # the file handle is closed; the pixels stay usable
    assert im.size == (16, 12) and rgb(pil_to_tensor(im), 0, 0) == RED


# ----------------------------------------------------------------------------------------------- discovery
def test_discover_images_recursive_sorted_deduplicated(tmp_path):
    (tmp_path / "b" / "deep").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    for rel in ("a.png", "b/x.JPG", "b/deep/z.webp", "b/deep/y.gif", "c.bmp", ".hidden/h.png", "._a.png",
                "notes.txt", "b/deep/data.csv"):
        f = tmp_path / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"x")
    (tmp_path / "b" / "loop").symlink_to(tmp_path, target_is_directory=True)  # must not recurse forever
    found = discover_images([tmp_path, tmp_path / "a.png", tmp_path / "notes.txt", tmp_path / "nope.png"])
    rel = [str(p.relative_to(tmp_path)) for p in found]
    assert rel == ["a.png", "b/deep/y.gif", "b/deep/z.webp", "b/x.JPG", "c.bmp", "notes.txt", "nope.png"]
