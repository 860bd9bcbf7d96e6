"""Seeded mutation fuzzing of spec validation (used by tests/test_spec_fuzz.py; also runnable by hand:
`python tests/spec_fuzz.py --cases 20000 --seed 1`).

The corpus is the shipped specs, the bad-spec corpus and a YAML bomb. Each case applies one to three mutations
(byte flips, truncation, duplicated / deleted / swapped lines, random keys and values from the schema, deep
nesting, anchors and aliases, odd bytes) and sometimes overrides, then validates the bytes as `rewardtune validate`
does: decode, parse, validate, preflight. Allowed outcomes: a valid spec, or a UsageError (exit 2; 4 from preflight
for a missing extra). Anything else is a failure. Prints one JSON line: counts, the slowest case, peak RSS, and
the failures (seed, case, exception, the mutated bytes).
"""
from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

KEYS = ["objective", "reward", "weight", "kwargs", "train", "lr", "steps", "betas", "method", "name", "k",
        "k_range", "sampling", "guidance_scale", "resolution", "prompts", "inline", "file", "builtin", "limit",
        "model", "pretrained", "trainable", "type", "rank", "ema", "decay", "logging", "tensorboard", "launcher",
        "additional", "seed", "batch_size", "role", "combine", "preset", "stop_range", "pretrain", "output_dir",
        "schema_version", "x", "<<", "? a", "[a, b]", "{a: 1}", "!!str k", "1", "null", "true", "é", ""]
VALUES = ["1", "0", "-1", "3e-4", ".nan", ".inf", "-.inf", "nan", "1e309", "9" * 60, "9" * 5000, "0x" + "f" * 900,
          "true", "null", "~", "''", '""', "[]", "{}", "[1, 2]", "[.nan, 1]", "{a: 1}", "clip", "pickscore",
          "aesthetic", "draft_k", "alignprop", "refl", "ranked", "lora", "full", "slurm", "local", "all",
          "weighted_sum", "assemble_ranked", "monitor", "adamw8bit", "zoo:sd1", "./missing-dir", "missing.txt",
          "!foo x",
          "!!binary zz", "!!python/object/apply:os.getcwd []", "!!set {a}", "2001-13-45", "*a", "&a [x, x]",
          "<<", "|", ">", "'unterminated", "\"\\x00\"", "[" * 80, "{" * 80, "é" * 10, "a" * 300]
ODD_BYTES = [b"\x00", b"\xff", b"\xe9", b"\x07", b"\t", b"\r", b"\xef\xbb\xbf", b"\xff\xfe", b"\x85", b"\xc2\xa0",
             b"\xf0\x9f\x92\xa9", b":", b"-", b"#", b"&", b"*", b"!", b"%", b"@", b"`", b"|", b">", b"'", b'"']
OVERRIDES = ["train.lr=nan", "train.steps=2", "train.steps.x=1", "objective.weight=5", "objective[0].weight=2",
             "objective[9].weight=1", "method.name=alignprop", "method.k=all", "sampling.steps=0", "a..b=1",
             "nonsense", "=1", "train.betas[5]=1", "objective[0].kwargs.x=.inf", "launcher.device=cpu",
             "prompts.train=[a, b]", "name=!foo x", "train.seed=" + "9" * 5000, "model.ema.decay=2"]


def bomb(levels: int = 9) -> bytes:
    lines = ["objective: [{reward: clip}]", "a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for prev, n in zip("abcdefghij", "bcdefghijk"[: levels - 1], strict=False):
        lines.append(f"{n}: &{n} [" + ",".join([f"*{prev}"] * 10) + "]")
    return ("\n".join(lines) + "\n").encode()


def corpus() -> list[tuple[str, bytes, Path]]:
    files = sorted((ROOT / "specs").rglob("*.yaml")) + sorted((ROOT / "tests/fixtures/bad_specs").glob("*.yaml"))
    out = [(str(p.relative_to(ROOT)), p.read_bytes(), p.parent) for p in files]
    return out + [("<bomb>", bomb(), ROOT)]


def mutate(rng: random.Random, data: bytes) -> bytes:
    lines = data.split(b"\n")
    what = rng.randrange(10)
    if what == 0 and data:  # byte flips
        b = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        return bytes(b)
    if what == 1:  # truncation
        return data[: rng.randrange(len(data) + 1)]
    if what == 2 and lines:  # duplicate a line
        i = rng.randrange(len(lines))
        lines.insert(rng.randrange(len(lines) + 1), lines[i])
    elif what == 3 and lines:  # delete a line
        del lines[rng.randrange(len(lines))]
    elif what == 4 and len(lines) > 1:  # swap two lines
        i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
        lines[i], lines[j] = lines[j], lines[i]
    elif what == 5:  # a random key: value at a random indent
        line = " " * rng.choice([0, 0, 2, 4, 6]) + f"{rng.choice(KEYS)}: {rng.choice(VALUES)}"
        lines.insert(rng.randrange(len(lines) + 1), line.encode())
    elif what == 6 and lines:  # replace the value of a random line
        i = rng.randrange(len(lines))
        key, sep, _ = lines[i].partition(b":")
        lines[i] = key + b": " + rng.choice(VALUES).encode() if sep else rng.choice(VALUES).encode()
    elif what == 7:  # deep nesting, flow or block
        n = rng.choice([10, 63, 64, 65, 200, 1000, 3000])
        if rng.random() < 0.5:
            lines.append(b"deep: " + b"[" * n + b"]" * n)
        else:
            lines += [b"deep:"] + [b" " * (i + 1) + f"k{i}:".encode() for i in range(min(n, 400))]
    elif what == 8:  # anchors and aliases, some recursive, some multiplying
        kind = rng.randrange(4)
        if kind == 0:
            lines += [b"x: &a [1, 2, 3]", b"y: [*a, *a, *a]", b"z: {<<: *a}"]
        elif kind == 1:
            lines += [b"x: &a [1, *a]"]
        elif kind == 2:
            lines += bomb(rng.randint(3, 7)).split(b"\n")[1:]
        else:
            lines += [b"x: &a {k: v}", b"y: {? *a : 1}", b"objective: *a"]
    else:  # odd bytes in odd places
        b = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            pos = rng.randrange(len(b) + 1)
            b[pos:pos] = rng.choice(ODD_BYTES)
        return bytes(b)
    return b"\n".join(lines)


def run(cases: int, seed: int, time_limit: float) -> dict:
    from rewardtune.errors import UsageError
    from rewardtune.spec.load import apply_overrides, source_from_bytes, validate_source
    from rewardtune.spec.preflight import preflight

    base = corpus()
    shipped = [c for c in base if c[0].startswith("specs/")]
    rng = random.Random(seed)
    outcomes: dict[str, int] = {"valid": 0}
    failures = []
    slowest = (0.0, -1)
    for case in range(cases):
        pool = shipped if rng.random() < 0.5 else base  # half from valid specs: more cases get far
        name, data, folder = pool[rng.randrange(len(pool))]
        for _ in range(rng.randint(1, 3)):
            data = mutate(rng, data)
        overrides = rng.sample(OVERRIDES, rng.randint(1, 2)) if rng.random() < 0.2 else []
        t = time.perf_counter()
        try:
            src = source_from_bytes(data, name=name, base_dir=folder)
            if overrides:
                apply_overrides(src, overrides)
            spec = validate_source(src)
            preflight(spec)
            outcomes["valid"] += 1
        except UsageError as e:
            key = f"exit {e.exit_code}"
            outcomes[key] = outcomes.get(key, 0) + 1
            if e.exit_code not in (2, 4) or not str(e).strip():
                failures.append({"case": case, "from": name, "error": f"exit {e.exit_code}: {e}",
                                 "data": data.decode("utf-8", "replace")[:2000], "overrides": overrides})
        except Exception as e:  # noqa: BLE001 - the point: any other exception is a failure to report
            failures.append({"case": case, "from": name, "error": f"{type(e).__name__}: {e}"[:500],
                             "traceback": traceback.format_exc()[-3000:],
                             "data": data.decode("utf-8", "replace")[:2000], "overrides": overrides})
        dt = time.perf_counter() - t
        if dt > slowest[0]:
            slowest = (dt, case)
        if dt > time_limit:
            failures.append({"case": case, "from": name, "error": f"took {dt:.2f} s",
                             "data": data.decode("utf-8", "replace")[:2000], "overrides": overrides})
    return {"cases": cases, "seed": seed, "outcomes": outcomes, "slowest_s": round(slowest[0], 4),
            "slowest_case": slowest[1], "peak_rss_kb": peak_rss_kb(),
            "torch_imported": "torch" in sys.modules, "failures": failures[:20], "n_failures": len(failures)}


def peak_rss_kb() -> int:
    """This process's peak resident memory. Not ru_maxrss: on Linux that keeps the parent's peak across fork and
    exec, so a child of a big pytest process would report pytest's memory."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # not Linux: no fork-inherited peak there


def mutated_files(n: int, seed: int, folder: Path) -> list[Path]:
    """`n` mutated specs written to `folder` (for the CLI part of the test)."""
    base = corpus()
    rng = random.Random(seed)
    out = []
    for i in range(n):
        _, data, _ = base[rng.randrange(len(base))]
        for _ in range(rng.randint(1, 3)):
            data = mutate(rng, data)
        p = folder / f"case{i}.yaml"
        p.write_bytes(data)
        out.append(p)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-limit", type=float, default=5.0, help="seconds one case may take")
    ap.add_argument("--memory-limit-mb", type=int, default=2048, help="address space cap, so a regression fails")
    a = ap.parse_args()
    cap = a.memory_limit_mb << 20
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    sys.path.insert(0, str(ROOT))
    print(json.dumps(run(a.cases, a.seed, a.time_limit)))
