"""Loading image files into float pixels [3,H,W] in [0,1], with every PIL mode converted correctly.

Conversion rules (what a reward sees):
- Alpha (RGBA, LA, PA, RGBa, P with a transparency entry) is composited on white, as a viewer on a white page
  shows it. Dropping alpha instead (PIL's plain ``convert("RGB")``) turns transparent areas into whatever colour
  the encoder left there, often black.
- 16-bit grayscale (I;16, I;16B, I;16L) is scaled from 0..65535 to 0..255; mode I (32-bit) is treated as
  16-bit when any value exceeds 255, otherwise as 8-bit; mode F as 0..1 when its maximum is <= 1, else 0..255.
- CMYK, YCbCr, 1-bit and the rest go through PIL's own conversion to RGB.
- GIF and animated WebP: the first frame.
- EXIF orientation is applied by default (``exif_transpose=True``): a reward should judge the picture as a
  person sees it, and a phone photo stored sideways with an orientation tag is displayed upright. Reference
  scorers (ImageReward, transformers' processors) ignore the tag, so pass ``exif_transpose=False`` to reproduce
  them bit for bit on such files. Images without the tag (all generated images) are unaffected.
- Embedded ICC profiles are ignored, as the reference processors do.

Files are checked before they are decoded: `inspect_image` reads only the header, so a decompression bomb or an
oversized image is refused (`ImageFileError`) without allocating its pixels. Only PNG, JPEG, WebP, BMP,
GIF and TIFF are opened: PIL's other plugins (EPS runs Ghostscript, for one) never see a file given here.

Large images can be downscaled while they are decoded (`max_short_side`): JPEGs are decoded at 1/2, 1/4 or 1/8
scale in the DCT (PIL's `draft`), then every format is resized with an antialiased bicubic filter, before any mode
conversion, so a 64-megapixel file never exists as float pixels (see `decode_size`).
"""
from __future__ import annotations

import math
import os
import stat
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".bmp", ".gif", ".tif", ".tiff")
#: Largest image (width * height) decoded by default: 8192 x 8192. Larger files get an error row.
DEFAULT_MAX_PIXELS = 8192 * 8192
#: the formats opened (PIL format names); anything else is "not an image"
FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")  # JPEG covers MPO (multi-picture) files
_EXIF_ORIENTATION = 0x0112
_PIL_LIMIT_LOCK = threading.Lock()


class ImageFileError(Exception):
    """A file that cannot be used as an image: missing, empty, not an image, corrupt, too large."""


# ----------------------------------------------------------------------------------------------- discovery
def is_image_name(path: str | Path) -> bool:
    return str(path).lower().endswith(IMAGE_SUFFIXES)


@dataclass
class Discovery:
    """What `discover` found: image files to score, symbolic links it did not follow, and folders (or entries)
    it could not read, each with the reason."""

    files: list[Path]
    skipped_links: list[Path]
    unreadable: list[tuple[Path, str]]


def discover(paths: Iterable[str | Path], *, follow_symlinks: bool = False) -> Discovery:
    """Expand files and folders (recursively) into image files, in a stable order, without duplicates.

    Files named explicitly are kept whatever their suffix (a non-image then gets its own error downstream), and a
    named symbolic link is followed: it was asked for. Inside folders only files with an image suffix count, and
    hidden files and folders (".*", e.g. macOS "._x.png" resource forks) are skipped. Symbolic links met inside a
    folder (to image files or to folders) lead outside what was given, so they are not followed but listed in
    `skipped_links`, unless `follow_symlinks` (then each folder is entered once, so link loops end). A folder
    that cannot be listed (permissions, I/O error) is listed in `unreadable`. A path that does not exist is
    returned as is, so the caller reports it as a per-file error.
    """
    out: list[Path] = []
    links: list[Path] = []
    unreadable: list[tuple[Path, str]] = []
    seen: set[str] = set()

    def add(p: Path) -> None:
        key = os.path.normcase(os.path.abspath(p))
        if key not in seen:
            seen.add(key)
            out.append(p)

    def why(e: OSError) -> str:
        return e.strerror or type(e).__name__

    def walk(folder: Path, found: list[Path], visited: set[tuple[int, int]]) -> None:
        try:
            st = folder.stat()
            if (st.st_dev, st.st_ino) in visited:  # a link loop, or a folder reached twice through links
                return
            visited.add((st.st_dev, st.st_ino))
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            unreadable.append((folder, why(e)))
            return
        for e in entries:
            if e.name.startswith("."):
                continue
            p = Path(e.path)
            try:
                if e.is_symlink():
                    if not (is_image_name(e.name) or e.is_dir(follow_symlinks=True)):
                        continue  # a link that would not be scored anyway
                    if not follow_symlinks:
                        links.append(p)
                        continue
                    if not e.is_dir(follow_symlinks=True):
                        found.append(p)  # a dangling link gets its "file not found" row
                        continue
                if e.is_dir(follow_symlinks=follow_symlinks):
                    walk(p, found, visited)
                elif is_image_name(e.name):
                    found.append(p)
            except OSError as err:
                unreadable.append((p, why(err)))

    for raw in paths:
        p = Path(raw).expanduser()
        if p.is_dir():
            found: list[Path] = []
            walk(p, found, set())
            for f in sorted(found, key=lambda q: [part.lower() for part in q.parts]):
                add(f)
        else:
            add(p)
    return Discovery(out, sorted(set(links)), unreadable)


def discover_images(paths: Iterable[str | Path], *, follow_symlinks: bool = False) -> list[Path]:
    """The image files of `discover(paths)` (skipped links and unreadable folders are dropped: use `discover`
    to report them)."""
    return discover(paths, follow_symlinks=follow_symlinks).files


# ----------------------------------------------------------------------------------------------- inspection
@dataclass(frozen=True)
class ImageInfo:
    """What the header of an image file says, before decoding. `size` is (width, height) as displayed."""

    path: Path
    format: str
    mode: str
    size: tuple[int, int]
    n_frames: int = 1


def _orientation(im, header_only: bool = False) -> int:
    """EXIF orientation tag (1 = as stored). With `header_only`, never decode pixels to find it: PIL's PNG
    getexif() loads the whole image when the eXIf chunk was not seen before the image data."""
    if header_only and im.format == "PNG" and "exif" not in im.info:
        return 1
    try:
        return int(im.getexif().get(_EXIF_ORIENTATION, 1) or 1)
    except Exception:  # a broken EXIF block must not make the image unusable
        return 1


def _open_checked(path: Path, max_pixels: int):
    """Open the header of `path`; raise ImageFileError with a readable reason on any problem."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    if not path.exists():
        raise ImageFileError("file not found")
    if path.is_dir():
        raise ImageFileError("is a directory")
    try:
        st = path.stat()
    except OSError as e:
        raise ImageFileError(f"cannot read file ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):  # never opened: reading a FIFO blocks, reading /dev/zero never ends
        raise ImageFileError("not a regular file (a FIFO, device or socket)")
    nbytes = st.st_size
    if nbytes == 0:
        raise ImageFileError("empty file (0 bytes)")
    # The errors are raised after the except blocks, never inside them: an exception raised there keeps PIL's
    # exception as its context, whose traceback keeps the decoder's frames, and with them its buffers, alive for
    # as long as the error is (a batch of failed 16000 px WebPs held 100 MB each).
    error = None
    try:
        # PIL refuses images above 2 * MAX_IMAGE_PIXELS at open (and warns above it): align its global limit with
        # ours for this call. Globals, so under a lock: files are opened from several threads.
        with _PIL_LIMIT_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, (max_pixels or None)
            try:
                im = Image.open(path, formats=FORMATS)
            finally:
                Image.MAX_IMAGE_PIXELS = saved
    except UnidentifiedImageError:
        error = "not an image (format not recognised; PNG, JPEG, WebP, BMP, GIF and TIFF are read)"
    except Image.DecompressionBombError as e:
        error = (f"image too large: {e} (a larger max_pixels allows it, at about 4 bytes of memory per pixel "
                 "while decoding)")
    except PermissionError:
        error = "permission denied"
    except MemoryError:
        error = "out of memory while reading the header"
    except Exception as e:  # noqa: BLE001 - a plugin parsing hostile bytes: any failure means an unusable file
        error = f"cannot read image header ({type(e).__name__}: {e})"
    if error is not None:
        raise ImageFileError(error)
    w, h = im.size
    if w <= 0 or h <= 0:
        im.close()
        raise ImageFileError(f"invalid image size {w}x{h}")
    if max_pixels and w * h > max_pixels:
        im.close()
        raise ImageFileError(f"image too large: {w}x{h} = {w * h / 1e6:.1f} MP is above the limit of "
                             f"{max_pixels / 1e6:.1f} MP (a larger max_pixels allows it, at about 4 bytes of "
                             "memory per pixel while decoding)")
    return im


def inspect_image(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS, exif_transpose: bool = True) -> ImageInfo:
    """Read only the header: format, mode and displayed size. Raises ImageFileError for unusable files.

    The size accounts for EXIF orientation when the tag is in the header (JPEG, WebP, TIFF, PNG with eXIf before
    the image data); a PNG whose eXIf chunk comes after the data is only known to be rotated once decoded."""
    p = Path(path)
    im = _open_checked(p, max_pixels)
    try:
        w, h = im.size
        if exif_transpose and _orientation(im, header_only=True) in (5, 6, 7, 8):  # rotated by 90 degrees: width and height swap
            w, h = h, w
        try:
            n_frames = int(getattr(im, "n_frames", 1) or 1)
        except Exception:  # noqa: BLE001 - a broken later frame; only the first is ever read
            n_frames = 1
        return ImageInfo(path=p, format=str(im.format or "?"), mode=str(im.mode), size=(w, h), n_frames=n_frames)
    finally:
        im.close()


def decode_size(size: tuple[int, int], max_short_side: int | None) -> tuple[int, int]:
    """(width, height) an image of `size` is decoded to with `max_short_side`: unchanged when its shorter side is
    at most `max_short_side`, else scaled down (aspect kept) until the shorter side equals it and the image holds
    at most 4 x max_short_side^2 pixels (which matters only beyond a 4:1 aspect ratio). Symmetric in width and
    height, so it applies to stored and displayed (EXIF-rotated) sizes alike."""
    w, h = int(size[0]), int(size[1])
    if not max_short_side or w <= 0 or h <= 0:
        return w, h
    scale = min(1.0, max_short_side / min(w, h), math.sqrt(4.0 * max_short_side * max_short_side / (w * h)))
    if scale >= 1.0:
        return w, h
    return max(1, round(w * scale)), max(1, round(h * scale))


# -------------------------------------------------------------------------------------------------- decoding
#: rows of this many pixels at a time when 16/32-bit images become 8-bit (bounds the float32 working copy)
_STRIP_PIXELS = 1 << 22


def _high_bit_to_l(img) -> Any:
    """I;16 / I / F -> 8-bit L, in strips of rows: a float32 copy of a 64 MP image would take 256 MB.

    16-bit values are scaled from 0..65535; mode I is treated as 16-bit when any value exceeds 255, else as
    8-bit; mode F as 0..1 when its maximum is <= 1, else 0..255 (NaN counts as 0). Float32 is exact here for
    16-bit values: v * 255 / 65535 + 0.5 is never within float32 error of an integer.
    """
    from PIL import Image

    mode = img.mode
    w, h = img.size
    step = max(1, _STRIP_PIXELS // max(1, w))
    strips = [(y, min(h, y + step)) for y in range(0, h, step)]

    def strip(y0: int, y1: int) -> np.ndarray:
        return np.asarray(img.crop((0, y0, w, y1))).astype(np.float32)

    if mode.startswith("I;16"):
        maxv = 65535.0
    else:
        top = -np.inf
        for y0, y1 in strips:
            a = strip(y0, y1)
            if mode == "F":
                a = a[~np.isnan(a)]
            if a.size:
                top = max(top, float(a.max()))
        maxv = (65535.0 if top > 255 else 255.0) if mode == "I" else (1.0 if top <= 1.0 else 255.0)
    out = Image.new("L", (w, h))
    for y0, y1 in strips:
        a = strip(y0, y1)
        np.nan_to_num(a, copy=False)
        a *= np.float32(255.0 / maxv)
        a += np.float32(0.5)
        np.clip(a, 0, 255, out=a)
        out.paste(Image.fromarray(a.astype(np.uint8)), (0, y0))
    return out


def _eight_bit(img) -> Any:
    """Any PIL mode -> L, LA, RGB or RGBA, alpha kept (not yet composited): the modes PIL resizes correctly."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _high_bit_to_l(img)
    if mode == "P":
        return img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
    if mode in ("PA", "RGBa"):
        return img.convert("RGBA")
    if mode == "La":
        return img.convert("LA")
    if mode in ("L", "LA", "RGB", "RGBA"):
        return img
    return img.convert("RGB")  # 1, CMYK, YCbCr, LAB, HSV: PIL's own conversion


def pil_to_rgb(img) -> Any:
    """Convert any PIL mode (RGBA, LA, L, P, I;16, I, F, CMYK...) to 8-bit RGB; alpha is composited on white."""
    from PIL import Image

    img = _eight_bit(img)
    if img.mode in ("RGBA", "LA"):
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, img)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img


def pil_to_uint8(img):
    """PIL image of any mode -> uint8 tensor [3,H,W] (RGB, alpha composited on white)."""
    import torch

    arr = np.asarray(pil_to_rgb(img), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def pil_to_tensor(img):
    """PIL image of any mode -> float32 tensor [3,H,W] in [0,1]."""
    return pil_to_uint8(img).float().div_(255.0)


def _downscale(im, size: tuple[int, int]):
    """Resize a decoded image to `size`: PIL's antialiased bicubic, the filter the rewards resize with. Measured
    on 2560-8192 px images brought to a 1024 px short side, then to a 224 px reward input: mean change 0.0008 in
    normalised units (a twentieth of one 8-bit step), largest 0.023 (1.6 steps, at hard edges); Lanczos rang more
    at hard edges (0.045), and PIL's `reducing_gap` shortcut tripled the mean change."""
    from PIL import Image

    # 8-bit L, LA, RGB or RGBA first (PIL premultiplies alpha when resizing): resizing palette indices, bilevel
    # or 16/32-bit values (whose scaling depends on their range) would be wrong; alpha is composited afterwards
    return _eight_bit(im).resize(size, Image.Resampling.BICUBIC)


def open_image(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS, exif_transpose: bool = True,
               max_short_side: int | None = None):
    """Decode the first frame of an image file into a PIL image (any mode), with EXIF orientation applied.

    With `max_short_side`, an image whose shorter side is larger is downscaled while it is decoded, to
    `decode_size(size, max_short_side)` (JPEG in the DCT first, then bicubic), and comes back as RGB, RGBA, L or LA.
    Raises ImageFileError (never a raw PIL error) when the file is missing, empty, not an image, truncated or
    corrupt, or larger than `max_pixels`.
    """
    from PIL import Image, ImageOps

    p = Path(path)
    im = _open_checked(p, max_pixels)
    error = None  # raised after the except blocks (see _open_checked)
    try:
        im.seek(0)  # first frame of a GIF / animated WebP
        target = decode_size(im.size, max_short_side)
        if target == tuple(im.size):
            target = None
        if target is not None and im.format in ("JPEG", "MPO"):
            im.draft(None, (2 * target[0], 2 * target[1]))  # DCT scaling by 1/2..1/8, to >= 2x the target
        im.load()
        small = _downscale(im, target) if target is not None else im
        out = ImageOps.exif_transpose(small) if exif_transpose else small.copy()
    except Image.DecompressionBombError as e:
        error = f"image too large: {e}"
    except MemoryError:
        error = "out of memory while decoding"
    except Exception as e:  # noqa: BLE001 - PIL decoding hostile bytes: any failure means a corrupt file
        error = f"corrupt or truncated image data ({type(e).__name__}: {e})"
    finally:
        im.close()
    if error is not None:
        raise ImageFileError(error)
    return out


def load_uint8(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS, exif_transpose: bool = True,
               max_short_side: int | None = None):
    """Image file -> uint8 tensor [3,H,W] (a quarter of the float size: cheap to queue and to copy to a GPU).
    `x.float().div_(255)` gives exactly `load_pixels`. `max_short_side`: see `open_image`. Raises ImageFileError
    for unusable files."""
    img = open_image(path, max_pixels=max_pixels, exif_transpose=exif_transpose, max_short_side=max_short_side)
    try:
        return pil_to_uint8(img)
    except (OSError, ValueError) as e:
        raise ImageFileError(f"cannot convert mode {img.mode} to RGB ({e})") from None


def load_pixels(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS, exif_transpose: bool = True):
    """Image file -> float32 tensor [3,H,W] in [0,1]. Raises ImageFileError for unusable files."""
    return load_uint8(path, max_pixels=max_pixels, exif_transpose=exif_transpose).float().div_(255.0)


def to_pixel_list(images: Any) -> list:
    """PIL images, paths, a [B,3,H,W] or [3,H,W] tensor, or a list of these -> list of [3,H,W] in [0,1]."""
    import torch

    if isinstance(images, torch.Tensor):
        if images.ndim == 3:
            images = images.unsqueeze(0)
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"Expected a [B,3,H,W] or [3,H,W] tensor, got {tuple(images.shape)}")
        return list(images.float())
    if not isinstance(images, Sequence) or isinstance(images, str | bytes):
        images = [images]
    out: list = []
    for im in images:
        if isinstance(im, torch.Tensor):
            out.extend(to_pixel_list(im))
        elif isinstance(im, str | Path):
            try:
                out.append(load_pixels(im))
            except ImageFileError as e:
                raise ImageFileError(f"{im}: {e}") from None
        else:
            out.append(pil_to_tensor(im))
    return out
