"""How often methods_shapes.py's 95% intervals on the relative gradient variance, tr(Cov g) / ||E g||^2, cover the
true value, on simulated gradients whose answer is known: n = 16 draws (as the gradient pass takes) of
g = mu + noise in 500 dimensions, with noise of several shapes, and the ratio of two such configurations.

    python benchmarks/variance_intervals_check.py     # about a minute -> results/variance_intervals_check.md

A nominal 95% interval should cover about 95% of the trials; the report says where it does not (heavy tails)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import RESULTS, machine_info  # noqa: E402
from methods_shapes import variance_intervals  # noqa: E402


def draws(n: int, dim: int, true_rv: float, shape: str, gen: torch.Generator) -> torch.Tensor:
    """n gradients whose mean has norm 1 and whose noise has total variance `true_rv`."""
    mu = torch.randn(dim, generator=gen, dtype=torch.float64)
    mu /= mu.norm()
    if shape.startswith("low-rank"):
        k = int(shape.split()[-1])
        basis = torch.linalg.qr(torch.randn(dim, k, generator=gen, dtype=torch.float64))[0]
        return mu + (torch.randn(n, k, generator=gen, dtype=torch.float64) * (true_rv / k) ** 0.5) @ basis.T
    scale = torch.ones(dim, dtype=torch.float64)
    if shape != "gaussian":  # uneven: a few coordinates carry most of the noise
        scale = torch.rand(dim, generator=gen, dtype=torch.float64) ** 6
    if shape.startswith("student-t"):
        nu = float(shape.split()[-1])
        z = torch.randn(n, dim, generator=gen, dtype=torch.float64)
        chi2 = torch.distributions.Chi2(torch.tensor(nu, dtype=torch.float64)).sample((n, dim))
        noise = z / (chi2 / nu).sqrt() / (nu / (nu - 2)) ** 0.5  # unit variance
    else:
        noise = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    scale = scale * (true_rv / scale.pow(2).sum()).sqrt()
    return mu + scale * noise


def coverage(shape: str, true_rv: float, other_rv: float, trials: int, n: int, dim: int, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # Chi2 samples from the global generator
    hit_rv = hit_ratio = resolved = 0
    for _ in range(trials):
        g, h = draws(n, dim, true_rv, shape, gen), draws(n, dim, other_rv, shape, gen)
        r = variance_intervals((g @ g.T).tolist(), (h @ h.T).tolist())
        if r["relative_variance"] is None or r.get("relative_variance_ci95") is None or r["vs_base"] is None:
            continue
        resolved += 1
        lo, hi = r["relative_variance_ci95"]
        hit_rv += lo <= true_rv <= hi
        lo, hi = r["vs_base_ci95"]
        hit_ratio += lo <= true_rv / other_rv <= hi
    return {"shape": shape, "true": true_rv, "other": other_rv, "trials": trials, "resolved": resolved,
            "rv": hit_rv / max(1, resolved), "ratio": hit_ratio / max(1, resolved)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=300)
    ap.add_argument("--out", type=Path, default=RESULTS / "variance_intervals_check.md")
    a = ap.parse_args()
    torch.set_num_threads(1)
    rows = [coverage(shape, rv, other, a.trials, 16, 500, seed)
            for seed, (shape, rv, other) in enumerate(
                [(s, rv, 1.25) for s in ("gaussian", "uneven gaussian", "student-t 5", "student-t 3",
                                         "low-rank 2", "low-rank 5") for rv in (1.25, 4.0)])]
    md = ["# Coverage of the relative-variance intervals (methods_shapes.py)", "",
          f"{a.trials} simulated trials per row, 16 draws of 500-dimensional gradients, ||E g|| = 1. 'relative "
          "variance' is the interval on tr(Cov g) / ||E g||^2 (true value in the second column); 'ratio' the "
          "interval on its ratio to an independent configuration whose true value is the third column. Nominal: "
          "95%. Trials where ||E g||^2 did not come out positive are left out (the report prints 'not resolved').",
          "", "| noise | true | other | resolved | relative variance covered | ratio covered |",
          "|---|---|---|---|---|---|"]
    md += [f"| {r['shape']} | {r['true']} | {r['other']} | {r['resolved']}/{r['trials']} | {r['rv']:.0%} | "
           f"{r['ratio']:.0%} |" for r in rows]
    md += ["", f"Machine: {machine_info()}.", ""]
    a.out.write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
