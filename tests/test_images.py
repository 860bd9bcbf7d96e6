"""Image files -> pixels: every format and mode the `score` command accepts, EXIF orientation, bad files."""
from __future__ import annotations

import io
import os
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
    decode_size,
    discover,
    discover_images,
    inspect_image,
    load_pixels,
    load_uint8,
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
    os.mkfifo(tmp_path / "fifo.png")  # never opened: reading it would block until a writer came
    for special in (tmp_path / "fifo.png", Path("/dev/zero")):
        with pytest.raises(ImageFileError, match="not a regular file"):
            load_pixels(special)
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


def test_symlinks_inside_folders_are_listed_not_followed_unless_asked(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    two_colour().save(outside / "secret.png")
    (outside / "more").mkdir()
    two_colour().save(outside / "more" / "m.png")
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    two_colour().save(root / "own.png")
    (root / "link.png").symlink_to(outside / "secret.png")  # a file link leading out of the folder
    (root / "sub" / "dir-link").symlink_to(outside / "more", target_is_directory=True)
    (root / "sub" / "loop").symlink_to(root, target_is_directory=True)
    (root / "dangling.png").symlink_to(tmp_path / "gone.png")
    (root / "notes.txt").symlink_to(outside / "secret.png")  # not an image name: never scored, never listed

    found = discover([root])
    assert [p.name for p in found.files] == ["own.png"]
    assert sorted(p.name for p in found.skipped_links) == ["dangling.png", "dir-link", "link.png", "loop"]
    assert discover_images([root]) == found.files
    # named explicitly, a link is followed: it was asked for
    assert discover([root / "link.png"]).files == [root / "link.png"]

    followed = discover([root], follow_symlinks=True)
    rel = sorted(str(p.relative_to(root)) for p in followed.files)
    # the loop back to root is entered once only (root itself was already visited); the dangling link is kept
    # so that it gets its own "file not found" row
    assert rel == ["dangling.png", "link.png", "own.png", "sub/dir-link/m.png"]
    assert followed.skipped_links == [] and followed.unreadable == []


def test_a_folder_that_cannot_be_listed_is_reported(tmp_path):
    import os

    (tmp_path / "ok").mkdir()
    two_colour().save(tmp_path / "ok" / "a.png")
    locked = tmp_path / "locked"
    locked.mkdir()
    two_colour().save(locked / "b.png")
    locked.chmod(0)
    try:
        if os.access(locked, os.R_OK):
            pytest.skip("this process reads folders whatever their mode (root with CAP_DAC_OVERRIDE); "
                        "tests/cli/test_score.py checks this without the capability")
        found = discover([tmp_path])
        assert [p.name for p in found.files] == ["a.png"]
        assert found.unreadable == [(locked, "Permission denied")]
    finally:
        locked.chmod(0o755)


# ------------------------------------------------------------------------------------ decode-time downscaling
def test_decode_size():
    assert decode_size((512, 512), 1024) == (512, 512)  # small images are never resized
    assert decode_size((1024, 4000), 1024) == (1024, 4000)  # shorter side already at the limit
    assert decode_size((8000, 8000), 1024) == (1024, 1024)
    assert decode_size((8000, 6000), 1024) == (1365, 1024)
    assert decode_size((6000, 8000), 1024) == (1024, 1365)  # symmetric: stored and rotated sizes agree
    assert decode_size((40000, 1000), 256) == (3238, 81)  # beyond 4:1 the pixel cap (4 x 256^2) binds
    assert decode_size((8000, 8000), None) == (8000, 8000)


def tiled_photos(w: int, h: int) -> Image.Image:
    """Real photos tiled at full resolution: hard edges and detail that only exist at the large size."""
    tiles = [Image.open(FIXTURES / f"{i}.webp").convert("RGB") for i in (1, 2, 3, 4)]
    out = Image.new("RGB", (w, h))
    for a in range(0, w, 512):
        for b in range(0, h, 512):
            out.paste(tiles[(a + b) // 512 % 4], (a, b))
    return out


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_downscaled_decode_changes_what_a_224px_reward_sees_by_less_than_parity_tolerance(tmp_path, suffix):
    """The exactness story of decode-time downscaling: rewards resize to their input size anyway (224 px for
    CLIP-family rewards and ImageReward), with an antialiased bicubic filter. Decoding a 2560x1920 image to a
    1024 px short side first changes that 224 px input by at most 0.03 (the parity tests' tolerance for our
    resampling versus PIL's) and on average by less than a tenth of an 8-bit step (0.0015)."""
    from rewardtune.rewards.preprocess import preprocess

    p = tmp_path / f"big{suffix}"
    tiled_photos(2560, 1920).save(p, **({"quality": 95} if suffix == ".jpg" else {}))
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)

    def seen(x):
        return preprocess(x.float().div(255)[None], size=224, mean=mean, std=std)

    full, small = load_uint8(p), load_uint8(p, max_short_side=1024)
    assert tuple(full.shape) == (3, 1920, 2560) and tuple(small.shape) == (3, 1024, 1365)
    d = (seen(full) - seen(small)).abs()
    assert d.max().item() < 0.03 and d.mean().item() < 0.0015, (d.max().item(), d.mean().item())


def test_images_at_or_below_the_limit_decode_bit_for_bit_as_before():
    for f in sorted(FIXTURES.glob("*.webp")):
        assert torch.equal(load_uint8(f, max_short_side=512), load_uint8(f))


@pytest.mark.parametrize("mode, colour, expect", [
    ("RGBA", (200, 30, 40, 0), (255, 255, 255)),  # transparent -> white, as without downscaling
    ("RGBA", (0, 0, 0, 128), (127, 127, 127)),
    ("LA", (100, 255), (100, 100, 100)),
    ("P", None, (160, 0, 0)),
    ("I;16", 257 * 70, (70, 70, 70)),
    ("I", 40000, (156, 156, 156)),  # above 255: a 16-bit range
    ("F", 0.5, (128, 128, 128)),  # at most 1: a 0..1 range
    ("1", 1, (255, 255, 255)),
    ("CMYK", (0, 255, 0, 0), (255, 0, 255)),
])
def test_every_mode_downscales_to_the_colour_it_decodes_to(tmp_path, mode, colour, expect):
    size = (1600, 1200)
    if mode == "P":
        im = Image.new("P", size, 1)
        im.putpalette([0, 0, 0, 160, 0, 0] + [0] * 762)
    else:
        im = Image.new(mode, size, colour)
    suffix = ".tif" if mode in ("I", "F", "CMYK") else ".png"
    p = tmp_path / f"img{suffix}"
    im.save(p)
    x = load_uint8(p, max_short_side=300)
    assert tuple(x.shape) == (3, 300, 400)
    full = load_uint8(p)
    assert tuple(full[:, 600, 800].tolist()) == expect
    assert close(tuple(x[:, 150, 200].tolist()), expect, 1), (mode, x[:, 150, 200].tolist())


def test_downscaled_jpeg_with_exif_rotation_comes_out_upright(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    p = tmp_path / "rot.jpg"
    two_colour(1600, 1200).save(p, quality=95, exif=exif.tobytes())  # stored landscape, shown portrait
    assert inspect_image(p).size == (1200, 1600)
    x = load_uint8(p, max_short_side=300)
    assert tuple(x.shape) == (3, 400, 300)  # decode_size of the displayed size
    t = x.float().div(255)
    assert close(rgb(t, 50, 150), RED, 12) and close(rgb(t, 350, 150), BLUE, 12)


def test_only_the_supported_formats_are_opened(tmp_path):
    """PIL opens dozens of formats (EPS runs Ghostscript); a file given to score is read only as PNG, JPEG, WebP,
    BMP, GIF or TIFF."""
    p = tmp_path / "img.png"
    Image.new("RGB", (8, 8)).save(p, "PPM")  # a valid PPM named .png
    with pytest.raises(ImageFileError, match="not an image"):
        inspect_image(p)


def test_errors_do_not_keep_the_decoder_alive(tmp_path):
    """ImageFileError is raised outside PIL's exception: chained, its traceback kept the decoder's frames and
    buffers alive as long as the error (found by the fuzz test: 100 MB per failed 16000 px WebP in a batch)."""
    p = tmp_path / "t.png"
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    noise.save(p)
    p.write_bytes(p.read_bytes()[:200])
    (tmp_path / "x.png").write_text("text")
    for f in (p, tmp_path / "x.png"):
        with pytest.raises(ImageFileError) as e:
            load_uint8(f)
        assert e.value.__context__ is None and e.value.__cause__ is None
