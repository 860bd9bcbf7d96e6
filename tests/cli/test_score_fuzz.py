"""Fuzzing `score` with broken image files: thousands of seeded mutations of real PNG, JPEG, WebP, GIF, BMP and
TIFF files (truncated, bytes flipped in the header or anywhere, empty, absurd declared sizes, wrong extensions,
text and directories named .png, random bytes).

The documented behaviour (docs/scoring.md): a file that cannot be scored gets its own error row, every other file
is scored, and the command exits 2 (bad input); nothing prints a traceback. Most of the files go in-process through
`discover` + `score_files` (what the CLI runs), in a child process whose peak RSS and time are bounded; a handful
go through the real CLI.
"""
from __future__ import annotations

import io
import json
import math
import random
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cli_process
import numpy as np
from PIL import Image

SEED = 20261130
N_FILES = 3000
TIME_LIMIT_S = 600  # generous: "does not hang" (about 60 s on an idle 2-core machine)
LIMIT_MB = 2048


# ------------------------------------------------------------------------------------------------ base files
def base_files() -> dict[str, bytes]:
    """Valid small files of every format the loader reads, with non-trivial content (so codecs use real data)."""
    rng = np.random.default_rng(SEED)
    rgb = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))
    out = {}

    def save(name: str, im: Image.Image, fmt: str, **kw) -> None:
        buf = io.BytesIO()
        im.save(buf, fmt, **kw)
        out[name] = buf.getvalue()

    save("rgb.png", rgb, "PNG")
    save("rgba.png", rgb.convert("RGBA"), "PNG")
    save("gray16.png", Image.fromarray(rng.integers(0, 65535, (30, 40), dtype=np.uint16)), "PNG")
    save("pal.png", rgb.convert("P"), "PNG")
    save("base.jpg", rgb, "JPEG", quality=90)
    save("progressive.jpg", rgb, "JPEG", quality=80, progressive=True)
    save("cmyk.jpg", rgb.convert("CMYK"), "JPEG")
    save("lossy.webp", rgb, "WEBP", quality=80)
    save("lossless.webp", rgb, "WEBP", lossless=True)
    save("alpha.webp", rgb.convert("RGBA"), "WEBP", quality=80)
    frames = [rgb, rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50)
    out["anim.gif"] = buf.getvalue()
    save("rgb.bmp", rgb, "BMP")
    save("rgb.tif", rgb, "TIFF")
    save("lzw.tif", rgb, "TIFF", compression="tiff_lzw")
    return out


# ---------------------------------------------------------------------------------------------- mutations
def huge_dims(data: bytes, name: str, rng: random.Random) -> bytes:
    """Rewrite the declared width/height (keeping checksums valid where the format has them)."""
    w = rng.choice([0, 1, 8193, 30000, 65535, 100_000, 2**31 - 1, rng.randint(1, 70000)])
    h = rng.choice([0, 1, 8193, 30000, 65535, 100_000, 2**31 - 1, rng.randint(1, 70000)])
    b = bytearray(data)
    if name.endswith(".png"):
        ihdr = b[12:29]
        ihdr[4:12] = struct.pack(">II", w & 0x7FFFFFFF, h & 0x7FFFFFFF)
        b[12:29] = ihdr
        b[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    elif name.endswith(".bmp"):
        b[18:26] = struct.pack("<ii", min(w, 2**31 - 1), min(h, 2**31 - 1))
    elif name.endswith(".gif"):
        b[6:10] = struct.pack("<HH", w & 0xFFFF, h & 0xFFFF)
    elif name.endswith(".jpg"):
        for marker in (b"\xff\xc0", b"\xff\xc2"):
            i = b.find(marker)
            if i >= 0:
                b[i + 5:i + 9] = struct.pack(">HH", h & 0xFFFF, w & 0xFFFF)
                break
    elif name.endswith(".webp"):
        if b[12:16] == b"VP8 ":
            b[26:30] = struct.pack("<HH", w & 0x3FFF, h & 0x3FFF)
        elif b[12:16] == b"VP8L":
            bits = ((w - 1) & 0x3FFF) | (((h - 1) & 0x3FFF) << 14)
            b[21:25] = struct.pack("<I", bits | (struct.unpack("<I", bytes(b[21:25]))[0] & ~0x0FFFFFFF))
        elif b[12:16] == b"VP8X":
            b[24:30] = ((w - 1) & 0xFFFFFF).to_bytes(3, "little") + ((h - 1) & 0xFFFFFF).to_bytes(3, "little")
    elif name.endswith(".tif"):
        (ifd,) = struct.unpack("<I", bytes(b[4:8]))
        (n,) = struct.unpack("<H", bytes(b[ifd:ifd + 2]))
        for k in range(n):
            e = ifd + 2 + 12 * k
            tag, typ = struct.unpack("<HH", bytes(b[e:e + 4]))
            if tag in (256, 257):
                v = w if tag == 256 else h
                b[e + 8:e + 12] = struct.pack("<I", v & 0xFFFFFFFF) if typ == 4 else struct.pack("<HH", v & 0xFFFF, 0)
    return bytes(b)


def mutate(data: bytes, name: str, rng: random.Random) -> tuple[str, bytes | None]:
    """(kind, bytes); bytes None means: make a directory with this name."""
    kind = rng.choice(["truncate", "flip-header", "flip-any", "huge-dims", "huge-dims", "zero", "splice",
                       "wrong-ext", "text", "random", "dir", "flip-and-truncate"])
    b = bytearray(data)
    if kind == "truncate":
        return kind, bytes(b[:rng.randrange(0, len(b))])
    if kind in ("flip-header", "flip-any", "flip-and-truncate"):
        span = min(len(b), 64) if kind == "flip-header" else len(b)
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(span)
            b[i] = rng.choice([b[i] ^ (1 << rng.randrange(8)), rng.randrange(256), 0, 255])
        if kind == "flip-and-truncate":
            b = b[:rng.randrange(len(b) // 2, len(b))]
        return kind, bytes(b)
    if kind == "huge-dims":
        return kind, huge_dims(data, name, rng)
    if kind == "zero":
        return kind, b""
    if kind == "splice":  # repeat or drop a random range (chunk duplication, missing segments)
        i, j = sorted(rng.sample(range(len(b)), 2))
        return kind, bytes(b[:j] + b[i:]) if rng.random() < 0.5 else bytes(b[:i] + b[j:])
    if kind == "wrong-ext":
        return kind, bytes(b)  # the caller gives it another format's suffix
    if kind == "text":
        return kind, rng.choice([b"hello, world\n", b"\x89PNG\r\n\x1a\n but then text", b"GIF89a" + b"x" * 20,
                                 b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"\xff\xd8\xff\xe0" + b"\x00" * 30, b"II*\x00"])
    if kind == "random":
        return kind, rng.randbytes(rng.randrange(1, 4096))
    return kind, None  # dir


def make_corpus(folder: Path, n: int) -> dict[str, str]:
    """n mutated files in `folder` (plus one valid file per base); returns {file name: mutation kind}."""
    rng = random.Random(SEED)
    bases = base_files()
    names = sorted(bases)
    kinds = {}
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in bases.items():
        (folder / f"valid-{name}").write_bytes(data)
        kinds[f"valid-{name}"] = "valid"
    for i in range(n):
        base = rng.choice(names)
        kind, data = mutate(bases[base], base, rng)
        suffix = Path(base).suffix
        if kind == "wrong-ext":
            suffix = rng.choice([s for s in (".png", ".jpg", ".webp", ".gif", ".bmp", ".tif") if s != suffix])
        elif kind == "text":
            suffix = rng.choice([".png", ".jpg", ".webp", ".gif"])
        out = folder / f"{i:05d}-{kind}-{Path(base).stem}{suffix}"
        if data is None:
            out.mkdir()
        else:
            out.write_bytes(data)
        kinds[out.name] = kind
    return kinds


# ------------------------------------------------------------------------------------------------------ tests
DRIVER = """
import json, math, resource, sys, time
from rewardtune.images import discover
from rewardtune.scoring import load_rewards, score_files

t0 = time.monotonic()
rewards = load_rewards(["clip"], tiny=True)
found = discover([sys.argv[1]])
rows = score_files(found, rewards, prompt="a photo", batch_size=16)
out = {"seconds": time.monotonic() - t0, "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
       "rows": [{"path": str(r.path), "error": r.error, "score": r.scores.get("clip")} for r in rows]}
print(json.dumps(out))
"""


def _env() -> dict[str, str]:
    return cli_process.env(columns=250, TRANSFORMERS_OFFLINE="1")


def test_thousands_of_mutated_images_each_get_a_score_or_an_error_row(tmp_path):
    folder = tmp_path / "fuzz"
    kinds = make_corpus(folder, N_FILES)
    p = subprocess.run([sys.executable, "-c", DRIVER, str(folder)], env=_env(), capture_output=True, text=True,
                       timeout=TIME_LIMIT_S)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr[-5000:]
    res = json.loads(p.stdout.strip().splitlines()[-1])
    rows = {Path(r["path"]).name: r for r in res["rows"]}
    # every file got exactly one row, and every row is either a finite score or an error that says what is
    # wrong; a directory named x.png inside the folder is a folder (walked, empty), not a file
    assert set(rows) == {n for n, k in kinds.items() if k != "dir"}, set(kinds) ^ set(rows)
    for name, r in rows.items():
        if r["error"] is None:
            assert r["score"] is not None and math.isfinite(r["score"]), name
        else:
            assert r["score"] is None and len(r["error"]) > 5, name
    for name, kind in kinds.items():
        if kind == "dir":
            continue
        if kind == "valid":
            assert rows[name]["error"] is None, (name, rows[name]["error"])
        elif kind in ("zero", "text", "random"):
            assert rows[name]["error"] is not None, (name, kind)
    by_kind: dict[str, list[int]] = {}
    for name, kind in kinds.items():
        if kind != "dir":
            by_kind.setdefault(kind, [0, 0])[rows[name]["error"] is not None] += 1
    assert sum(bad for _, bad in by_kind.values()) > N_FILES // 2, by_kind  # the mutations mostly break files
    assert res["maxrss_mb"] < LIMIT_MB, res["maxrss_mb"]


def test_broken_files_through_the_real_cli_exit_2_without_a_traceback(tmp_path):
    rng = random.Random(SEED + 1)
    bases = base_files()
    good = tmp_path / "good.png"
    good.write_bytes(bases["rgb.png"])
    alone = [("truncated.png", bases["rgb.png"][:100]), ("huge.png", huge_dims(bases["rgb.png"], "x.png", rng)),
             ("text.png", b"not an image\n"), ("empty.webp", b"")]
    among = [("flipped.jpg", mutate(bases["base.jpg"], "base.jpg", random.Random(7))[1] or b"\xff\xd8"),
             ("gif-as.jpg", bases["anim.gif"][:60]), ("noise.tif", random.Random(3).randbytes(500))]
    for name, data in alone + among:
        (tmp_path / name).write_bytes(data)
    (tmp_path / "dir.png").mkdir()  # named explicitly, a directory is a folder: searched (and empty)
    cmd = [sys.executable, "-m", "rewardtune.cli.main", "score", "--no-progress", "--tiny", "-r", "clip", "-p", "x"]
    for name in ("huge.png", "empty.webp"):  # the only file, and unusable (too large to decode; empty)
        p = subprocess.run([*cmd, str(tmp_path / name)], env=_env(), capture_output=True, text=True, timeout=300)
        assert p.returncode == 2, (name, p.returncode, p.stderr[-2000:])
        assert "Traceback" not in p.stderr + p.stdout and "0 scored, 1 failed" in p.stderr, (name, p.stderr)
    # bad files among a good one: an error row each, the good one scored, exit 2
    p = subprocess.run([*cmd, "--json", str(good), *(str(tmp_path / n) for n, _ in alone + among),
                        str(tmp_path / "dir.png")], env=_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-2000:]
    doc = json.loads(p.stdout)
    errors = {Path(r["path"]).name: r["error"] for r in doc["results"]}
    assert sorted(errors) == sorted(["good.png", *(n for n, _ in alone + among)])
    assert errors["good.png"] is None
    assert "not an image" in errors["text.png"] and "corrupt or truncated" in errors["truncated.png"]
    assert "too large" in errors["huge.png"] or "cannot read" in errors["huge.png"]
    assert errors["gif-as.jpg"] is not None and errors["noise.tif"] is not None
    assert doc["failed"] >= 6 and doc["scored"] == len(errors) - doc["failed"]
