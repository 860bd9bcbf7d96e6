"""The gradient-variance statistics of benchmarks/methods_shapes.py: computed from the draws' Gram matrix, they
equal the direct formulas; degenerate cases say "not resolved" instead of printing a negative variance."""
from __future__ import annotations

import math

import pytest
import torch


@pytest.fixture
def ms(monkeypatch):
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import methods_shapes

    return methods_shapes


def _direct(g: torch.Tensor) -> float:
    """tr(Cov g) / ||E g||^2: the unbiased sample variance over ||mean||^2 less the mean's own noise."""
    n = g.shape[0]
    s2 = float((g - g.mean(0)).pow(2).sum() / (n - 1))
    return s2 / (float(g.mean(0).pow(2).sum()) - s2 / n)


def test_the_gram_matrix_gives_the_direct_statistic_and_its_leave_one_out_values(ms):
    gen = torch.Generator().manual_seed(0)
    g = 0.5 + torch.randn(16, 300, generator=gen, dtype=torch.float64)
    h = 0.5 + 2 * torch.randn(16, 300, generator=gen, dtype=torch.float64)
    r = ms.variance_intervals((g @ g.T).tolist(), (h @ h.T).tolist())
    assert r["relative_variance"] == pytest.approx(_direct(g), rel=1e-10)
    assert r["vs_base"] == pytest.approx(_direct(g) / _direct(h), rel=1e-10)
    # the jackknife on the log scale, by hand from the 16 leave-one-out estimates
    loo = torch.tensor([_direct(torch.cat([g[:i], g[i + 1:]])) for i in range(16)], dtype=torch.float64).log()
    se = math.sqrt(15 / 16 * float((loo - loo.mean()).pow(2).sum()))
    lo, hi = r["relative_variance_ci95"]
    assert lo == pytest.approx(_direct(g) * math.exp(-2.131 * se), rel=1e-9)
    assert hi == pytest.approx(_direct(g) * math.exp(2.131 * se), rel=1e-9)
    assert lo < r["relative_variance"] < hi


def test_noise_too_large_to_resolve_is_reported_as_such(ms):
    gen = torch.Generator().manual_seed(1)
    half = torch.randn(8, 300, generator=gen, dtype=torch.float64)
    noisy = torch.cat([half, -half]) + 1e-3  # a mean far below its own noise: ||mean||^2 - s^2/n < 0
    fine = 1 + 0.1 * torch.randn(16, 300, generator=gen, dtype=torch.float64)
    assert _direct(noisy) < 0
    r = ms.variance_intervals((noisy @ noisy.T).tolist(), (fine @ fine.T).tolist())
    assert r["relative_variance"] is None and r["vs_base"] is None
    r = ms.variance_intervals((fine @ fine.T).tolist(), (noisy @ noisy.T).tolist())
    assert r["relative_variance"] > 0 and r["vs_base"] is None  # against an unresolved base: no ratio
    assert ms._interval(r, "vs_base", "x") == "—"
    with pytest.raises(ValueError, match="tabled"):
        ms.variance_intervals([[1.0] * 5] * 5, [[1.0] * 5] * 5)
