"""The shapes world: one flat-coloured shape on a plain light background, its caption, and a ground-truth judge.

Images are 32x32 RGB, rendered in numpy with 4x4 supersampling (anti-aliased edges), deterministic from a seed.
A scene is a list of objects (today always one): each has a colour from `COLOURS`, a shape from `SHAPES`, a
half-size and a centre. Captions read "a red circle". The structure leaves room for more attributes (count,
position, two objects) without changing what exists.

`judge` reads colour and shape back from pixels with fixed rules and no learned model:
1. background = per-channel median of the border pixels;
2. foreground core = pixels farther than 0.3 from the background (RGB distance, values in [0, 1]); its median is
   the object's colour, and the object covers a pixel when the pixel's distance from the background exceeds half
   the object's contrast (about 50% coverage, the same threshold the templates use);
3. colour = nearest palette entry, or none when the nearest is farther than `COLOUR_TOLERANCE`;
4. shape = analysis by synthesis: for each of circle, square, triangle and diamond, the world's renderer draws that
   shape with the blob's area and centroid, and the one whose soft coverage overlaps the image's best (soft IoU)
   wins; no shape when the best IoU is under `SHAPE_MIN_IOU` or the blob touches the image border.
A verdict is "correct" only for a clean reading, so garbage is never lucky: on noise both accuracies are near 0.
No torch here: numpy only.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

RES = 32
SUPERSAMPLE = 4

#: name -> sRGB in [0, 1]: saturated and far apart (every pair differs by >= 0.3 in RGB distance)
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.12, 0.12),
    "orange": (0.96, 0.55, 0.08),
    "yellow": (0.94, 0.86, 0.10),
    "green": (0.15, 0.67, 0.24),
    "cyan": (0.10, 0.78, 0.86),
    "blue": (0.16, 0.27, 0.86),
    "purple": (0.55, 0.20, 0.75),
    "pink": (0.95, 0.45, 0.72),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
HALF_SIZE = (6.0, 11.0)  # object half-size range, pixels
BACKGROUND = (0.90, 1.0)  # grey level range of the background
COLOUR_JITTER = 0.04  # per-channel uniform jitter of an object's colour

COLOUR_TOLERANCE = 0.22  # farther than this from every palette colour: no colour
SHAPE_MIN_IOU = 0.8  # best soft IoU with a rendered template below this: no shape
MIN_PIXELS = 12  # fewer foreground pixels: nothing drawn


@dataclass(frozen=True)
class Obj:
    colour: str
    shape: str
    half_size: float
    cx: float
    cy: float
    rgb: tuple[float, float, float]


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]
    background: float

    @property
    def caption(self) -> str:
        return caption(self.objects[0].colour, self.objects[0].shape)


def caption(colour: str, shape: str) -> str:
    return f"{'an' if colour[0] in 'aeiou' else 'a'} {colour} {shape}"


def prompts() -> list[str]:
    """Every caption of the world, colour-major: 'a red circle', 'a red square', ..., 'an orange circle', ..."""
    return [caption(c, s) for c in COLOURS for s in SHAPES]


# ------------------------------------------------------------------------------------------------------ render
def _inside(shape: str, dx: np.ndarray, dy: np.ndarray, s: float) -> np.ndarray:
    """Membership of points (dx, dy) relative to the centre, for an object of half-size s (y grows downwards)."""
    if shape == "circle":
        return dx * dx + dy * dy <= s * s
    if shape == "square":
        a = 0.85 * s
        return (np.abs(dx) <= a) & (np.abs(dy) <= a)
    if shape == "triangle":  # apex up at -s, base at +0.75 s, as wide as the circle
        top, base = -s, 0.75 * s
        return (dy >= top) & (dy <= base) & (np.abs(dx) <= (dy - top) / (base - top) * s)
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= s
    raise ValueError(f"unknown shape '{shape}'; known: {', '.join(SHAPES)}")


def _subpixel_grid(res: int = RES, ss: int = SUPERSAMPLE) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(res * ss) + 0.5) / ss
    return np.meshgrid(c, c)  # x, y in pixel units


def coverage(shape: str, cx: float, cy: float, s: float, res: int = RES) -> np.ndarray:
    """Fraction of each pixel covered by the object, [res, res]."""
    x, y = _subpixel_grid(res)
    inside = _inside(shape, x - cx, y - cy, s).astype(np.float32)
    return inside.reshape(res, SUPERSAMPLE, res, SUPERSAMPLE).mean(axis=(1, 3))


def render(scene: Scene, res: int = RES) -> np.ndarray:
    """float32 [res, res, 3] in [0, 1]."""
    img = np.full((res, res, 3), scene.background, dtype=np.float32)
    for o in scene.objects:
        a = coverage(o.shape, o.cx, o.cy, o.half_size, res)[..., None]
        img = img * (1 - a) + np.asarray(o.rgb, dtype=np.float32) * a
    return img


def random_scene(rng: np.random.Generator, colour: str | None = None, shape: str | None = None,
                 res: int = RES) -> Scene:
    """One object of the given (or a random) colour and shape, random size, position, background and jitter."""
    colour = colour or str(rng.choice(list(COLOURS)))
    shape = shape or str(rng.choice(SHAPES))
    s = float(rng.uniform(*HALF_SIZE))
    margin = s + 1.0
    cx, cy = (float(v) for v in rng.uniform(margin, res - margin, size=2))
    rgb = np.clip(np.asarray(COLOURS[colour]) + rng.uniform(-COLOUR_JITTER, COLOUR_JITTER, 3), 0, 1)
    bg = float(rng.uniform(*BACKGROUND))
    return Scene((Obj(colour, shape, s, cx, cy, tuple(float(v) for v in rgb)),), bg)


def sample(n: int, seed: int, res: int = RES) -> tuple[np.ndarray, list[Scene]]:
    """n scenes and their images [n, res, res, 3] (float32, [0, 1]), the same for the same seed everywhere."""
    rng = np.random.default_rng(seed)
    scenes = [random_scene(rng, res=res) for _ in range(n)]
    return np.stack([render(sc, res) for sc in scenes]), scenes


def sample_balanced(per_prompt: int, seed: int, res: int = RES) -> tuple[np.ndarray, list[Scene]]:
    """`per_prompt` scenes of every caption, in `prompts()` order repeated."""
    rng = np.random.default_rng(seed)
    scenes = [random_scene(rng, c, s, res) for _ in range(per_prompt) for c in COLOURS for s in SHAPES]
    return np.stack([render(sc, res) for sc in scenes]), scenes


# ------------------------------------------------------------------------------------------------------- judge
_WORD = re.compile(r"[a-z]+")


def parse_prompt(prompt: str) -> tuple[str, str]:
    """(colour, shape) named by a prompt such as 'a red circle'. ValueError when it names not exactly one of each."""
    words = _WORD.findall(prompt.lower())
    cols = [w for w in words if w in COLOURS]
    shps = [w for w in words if w in SHAPES]
    if len(cols) != 1 or len(shps) != 1:
        raise ValueError(f"the shapes world judges prompts that name one colour ({', '.join(COLOURS)}) and one "
                         f"shape ({', '.join(SHAPES)}), like 'a red circle'; got {prompt!r}")
    return cols[0], shps[0]


@dataclass(frozen=True)
class Reading:
    """What the judge read from one image; None where it could not read a clean answer."""

    colour: str | None
    shape: str | None
    colour_distance: float  # distance of the object's colour to the nearest palette entry
    shape_iou: float  # IoU of the best template
    pixels: int  # size of the largest foreground blob


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """Largest 4-connected component of a boolean mask (iterative flood fill)."""
    h, w = mask.shape
    labels = np.zeros((h, w), dtype=np.int32)
    best, best_size, current = 0, 0, 0
    for y0, x0 in zip(*np.nonzero(mask), strict=True):
        if labels[y0, x0]:
            continue
        current += 1
        stack = [(int(y0), int(x0))]
        labels[y0, x0] = current
        size = 0
        while stack:
            y, x = stack.pop()
            size += 1
            for yy, xx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= yy < h and 0 <= xx < w and mask[yy, xx] and not labels[yy, xx]:
                    labels[yy, xx] = current
                    stack.append((yy, xx))
        if size > best_size:
            best, best_size = current, size
    return labels == best if best else np.zeros_like(mask)


#: area of each shape in units of half-size squared, and its centroid's offset below the centre (in half-sizes)
_AREA = {"circle": float(np.pi), "square": 1.7 ** 2, "triangle": 1.75, "diamond": 2.0}
_CENTROID_DY = {"circle": 0.0, "square": 0.0, "triangle": 0.5 / 3, "diamond": 0.0}


def read_image(img: np.ndarray) -> Reading:
    """Read one image, float [H, W, 3] in [0, 1] (H = W).

    The shape is found by analysis by synthesis: for each candidate shape, the object of that shape with the
    blob's area and centroid is rendered with the world's own renderer, and compared with the image's soft
    foreground (coverage estimated from colour distance) by soft IoU = sum(min) / sum(max)."""
    img = np.asarray(img, dtype=np.float32)
    res = img.shape[0]
    border = np.concatenate([img[0], img[-1], img[1:-1, 0], img[1:-1, -1]])
    bg = np.median(border, axis=0)
    dist = np.linalg.norm(img - bg, axis=-1)
    core = dist > 0.3
    nothing = Reading(None, None, float("inf"), 0.0, int(core.sum()))
    if core.sum() < MIN_PIXELS // 2:
        return nothing
    fg = np.median(img[core], axis=0)
    contrast = float(np.linalg.norm(fg - bg))
    if contrast < 0.3:
        return nothing
    alpha = np.clip(dist / contrast, 0.0, 1.0)
    mask = alpha > 0.5
    blob = _largest_component(mask)
    n = int(blob.sum())
    if n < MIN_PIXELS:
        return Reading(None, None, float("inf"), 0.0, n)
    # the colour: median of the blob's inner pixels (anti-aliased edges mix in the background)
    inner = blob & (alpha > 0.8)
    rgb = np.median(img[inner if inner.sum() >= 4 else blob], axis=0)
    names = list(COLOURS)
    d = np.linalg.norm(np.asarray([COLOURS[c] for c in names]) - rgb, axis=1)
    colour = names[int(d.argmin())] if d.min() <= COLOUR_TOLERANCE else None
    # the shape: the blob with its anti-aliased rim (one pixel around it) as soft coverage
    rim = blob.copy()
    rim[1:] |= blob[:-1]
    rim[:-1] |= blob[1:]
    rim[:, 1:] |= blob[:, :-1]
    rim[:, :-1] |= blob[:, 1:]
    obj = np.where(rim, alpha, 0.0)
    rest = np.where(rim, 0.0, alpha * (alpha > 0.35))  # other foreground counts against every template
    area = float(obj.sum())
    ys, xs = np.mgrid[0:res, 0:res] + 0.5
    cx, cy = float((obj * xs).sum() / area), float((obj * ys).sum() / area)
    ious = []
    for shp in SHAPES:
        s = float(np.sqrt(area / _AREA[shp]))
        t = coverage(shp, cx, cy - _CENTROID_DY[shp] * s, s, res)
        ious.append(float(np.minimum(t, obj).sum() / (np.maximum(t, obj).sum() + rest.sum())))
    best = int(np.argmax(ious))
    touches_border = bool(blob[0].any() or blob[-1].any() or blob[:, 0].any() or blob[:, -1].any())
    clean = ious[best] >= SHAPE_MIN_IOU and not touches_border
    return Reading(colour, SHAPES[best] if clean else None, float(d.min()), ious[best], n)


@dataclass(frozen=True)
class Verdict:
    prompt: str
    reading: Reading
    colour_ok: bool
    shape_ok: bool

    @property
    def both_ok(self) -> bool:
        return self.colour_ok and self.shape_ok

    @property
    def text(self) -> str:
        """Short caption for image grids, e.g. 'saw red circle: ok' or 'saw orange ?: wrong colour'."""
        seen = f"{self.reading.colour or '?'} {self.reading.shape or '?'}"
        if self.both_ok:
            return f"saw {seen}: ok"
        wrong = [w for w, ok in (("colour", self.colour_ok), ("shape", self.shape_ok)) if not ok]
        return f"saw {seen}: wrong {', '.join(wrong)}"


def judge(images: np.ndarray, prompts_: Sequence[str]) -> list[Verdict]:
    """Verdicts for images [N, H, W, 3] in [0, 1] against their prompts."""
    if len(images) != len(prompts_):
        raise ValueError(f"{len(images)} images but {len(prompts_)} prompts")
    out = []
    for img, p in zip(images, prompts_, strict=True):
        colour, shape = parse_prompt(p)
        r = read_image(img)
        out.append(Verdict(p, r, r.colour == colour, r.shape == shape))
    return out


def accuracy(verdicts: Sequence[Verdict]) -> dict[str, float]:
    """Fractions correct: colour, shape, both."""
    n = max(1, len(verdicts))
    return {"colour": sum(v.colour_ok for v in verdicts) / n, "shape": sum(v.shape_ok for v in verdicts) / n,
            "both": sum(v.both_ok for v in verdicts) / n}
