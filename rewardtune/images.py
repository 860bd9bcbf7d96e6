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
oversized image is refused (`ImageFileError`) without allocating its pixels.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".bmp", ".gif", ".tif", ".tiff")
#: Largest image (width * height) decoded by default: 8192 x 8192. Larger files get an error row.
DEFAULT_MAX_PIXELS = 8192 * 8192
_EXIF_ORIENTATION = 0x0112
_PIL_LIMIT_LOCK = threading.Lock()


class ImageFileError(Exception):
    """A file that cannot be used as an image: missing, empty, not an image, corrupt, too large."""


# ----------------------------------------------------------------------------------------------- discovery
def is_image_name(path: str | Path) -> bool:
    return str(path).lower().endswith(IMAGE_SUFFIXES)


def discover_images(paths: Iterable[str | Path]) -> list[Path]:
    """Expand files and folders (recursively) into image files, in a stable order, without duplicates.

    Files named explicitly are kept whatever their suffix (a non-image then gets its own error downstream);
    inside folders only files with an image suffix count, and hidden files and folders (".*", e.g. macOS
    "._x.png" resource forks) are skipped. Symlinked folders are not followed (no loops). A path that does not
    exist is returned as is, so the caller reports it as a per-file error.
    """
    out: list[Path] = []
    seen: set[str] = set()

    def add(p: Path) -> None:
        key = os.path.normcase(os.path.abspath(p))
        if key not in seen:
            seen.add(key)
            out.append(p)

    for raw in paths:
        p = Path(raw).expanduser()
        if p.is_dir():
            found = []
            for root, dirs, files in os.walk(p, followlinks=False):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found.extend(Path(root) / f for f in files if not f.startswith(".") and is_image_name(f))
            for f in sorted(found, key=lambda q: [part.lower() for part in q.parts]):
                add(f)
        else:
            add(p)
    return out


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
        nbytes = path.stat().st_size
    except OSError as e:
        raise ImageFileError(f"cannot read file ({e.strerror or e})") from None
    if nbytes == 0:
        raise ImageFileError("empty file (0 bytes)")
    try:
        # PIL refuses images above 2 * MAX_IMAGE_PIXELS at open (and warns above it): align its global limit with
        # ours for this call. Globals, so under a lock: files are opened from several threads.
        with _PIL_LIMIT_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, (max_pixels or None)
            try:
                im = Image.open(path)
            finally:
                Image.MAX_IMAGE_PIXELS = saved
    except UnidentifiedImageError:
        raise ImageFileError("not an image (format not recognised)") from None
    except Image.DecompressionBombError as e:
        raise ImageFileError(f"image too large: {e}") from None
    except PermissionError:
        raise ImageFileError("permission denied") from None
    except (OSError, SyntaxError, ValueError) as e:  # PIL raises SyntaxError for some broken headers
        raise ImageFileError(f"cannot read image header ({e})") from None
    w, h = im.size
    if w <= 0 or h <= 0:
        im.close()
        raise ImageFileError(f"invalid image size {w}x{h}")
    if max_pixels and w * h > max_pixels:
        im.close()
        raise ImageFileError(f"image too large: {w}x{h} = {w * h / 1e6:.1f} MP is above the limit of "
                             f"{max_pixels / 1e6:.1f} MP (raise it with --max-pixels)")
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
        return ImageInfo(path=p, format=str(im.format or "?"), mode=str(im.mode), size=(w, h),
                         n_frames=int(getattr(im, "n_frames", 1) or 1))
    finally:
        im.close()


# -------------------------------------------------------------------------------------------------- decoding
def pil_to_rgb(img) -> Any:
    """Convert any PIL mode (RGBA, LA, L, P, I;16, I, F, CMYK...) to 8-bit RGB; alpha is composited on white."""
    from PIL import Image

    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img).astype(np.float64)
        if mode.startswith("I;16"):
            maxv = 65535.0
        elif mode == "I":
            maxv = 65535.0 if arr.size and arr.max() > 255 else 255.0
        else:  # F
            maxv = 1.0 if arr.size and np.nanmax(arr) <= 1.0 else 255.0
        arr = np.clip(np.nan_to_num(arr) / maxv * 255.0 + 0.5, 0, 255).astype(np.uint8)
        img = Image.fromarray(arr)
        mode = "L"
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
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


def open_image(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS, exif_transpose: bool = True):
    """Decode the first frame of an image file into a PIL image (any mode), with EXIF orientation applied.

    Raises ImageFileError (never a raw PIL error) when the file is missing, empty, not an image, truncated or
    corrupt, or larger than `max_pixels`.
    """
    from PIL import Image, ImageOps

    p = Path(path)
    im = _open_checked(p, max_pixels)
    try:
        im.seek(0)  # first frame of a GIF / animated WebP
        im.load()
        out = ImageOps.exif_transpose(im) if exif_transpose else im.copy()
    except Image.DecompressionBombError as e:
        raise ImageFileError(f"image too large: {e}") from None
    except MemoryError:
        raise ImageFileError("out of memory while decoding") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as e:
        raise ImageFileError(f"corrupt or truncated image data ({e})") from None
    finally:
        im.close()
    return out


def load_uint8(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS, exif_transpose: bool = True):
    """Image file -> uint8 tensor [3,H,W] (a quarter of the float size: cheap to queue and to copy to a GPU).
    `x.float().div_(255)` gives exactly `load_pixels`. Raises ImageFileError for unusable files."""
    img = open_image(path, max_pixels=max_pixels, exif_transpose=exif_transpose)
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
