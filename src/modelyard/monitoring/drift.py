"""Does a window of traffic still look like what a version was evaluated on?

Three two-sample tests between the version's reference profile (its answers on its test split) and the
window, each on something the model itself produced (drift on raw pixels says little):

- `confidence`: Kolmogorov-Smirnov on the top score; inputs unlike the training data usually move it first.
- `predicted_class`: chi-squared on the counts of predicted classes (a 2 x classes contingency table).
- `embedding`: the squared maximum mean discrepancy (RBF kernel, bandwidth by the median heuristic) between
  projected penultimate embeddings, its p-value from a permutation test. It sees a shift in what the model
  sees even when the scores have not moved yet.
- `length`, `unknown_share` (texts; `length` for series too): Kolmogorov-Smirnov on what the preprocessor
  describes of each input, where both sides have it: longer texts, or texts from another domain with more
  words the vocabulary does not know.

The window drifts when any test's p-value is below `alpha` divided by the number of tests run (Bonferroni).
The tests take rows as independent draws; inputs of one request, or traffic close in time, are not, so
in-distribution traffic is reported as drifted somewhat more often than `alpha` of monitor runs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

MIN_DESCRIBED = 20  # rows a side with a `length` / `unknown_share` before those are tested


@dataclass(frozen=True)
class DriftTest:
    name: str
    statistic: float
    p_value: float
    drifted: bool
    detail: str = ""


@dataclass
class DriftReport:
    reference_rows: int
    window_rows: int
    alpha: float
    tests: list[DriftTest] = field(default_factory=list)

    @property
    def drifted(self) -> bool:
        return any(t.drifted for t in self.tests)

    @property
    def score(self) -> float:
        """The smallest p-value (1.0 with no tests): lower is more drift."""
        return min((t.p_value for t in self.tests), default=1.0)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "drifted": self.drifted, "score": self.score}


def _mmd2(kernel: np.ndarray, n: int) -> float:
    """The biased squared MMD between the first `n` rows and the rest, from their pooled kernel matrix."""
    return float(kernel[:n, :n].mean() + kernel[n:, n:].mean() - 2 * kernel[:n, n:].mean())


def mmd_test(x: np.ndarray, y: np.ndarray, permutations: int, rng: np.random.Generator) -> tuple[float, float]:
    """(MMD², permutation p-value) of `x` against `y`."""
    both = np.concatenate([x, y]).astype(np.float64)
    sq = np.sum(both ** 2, axis=1)
    distances = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * both @ both.T, 0))
    positive = distances[distances > 0]
    bandwidth = float(np.median(positive)) if len(positive) else 1.0
    kernel = np.exp(-distances ** 2 / (2 * bandwidth ** 2))
    observed = _mmd2(kernel, len(x))
    exceed = 0
    for _ in range(permutations):
        order = rng.permutation(len(both))
        exceed += _mmd2(kernel[np.ix_(order, order)], len(x)) >= observed
    return observed, (exceed + 1) / (permutations + 1)


def compare(reference: Any, window: Any, *, alpha: float = 0.01, max_rows: int = 500, permutations: int = 500,
            seed: int = 0) -> DriftReport:
    """The drift tests of `window` against `reference` (DataFrames of traffic rows, `monitoring.profile`).
    Each side is subsampled to at most `max_rows` rows (seeded) for the embedding test."""
    from scipy import stats

    if len(reference) == 0 or len(window) == 0:
        raise ValueError(f"nothing to compare: {len(reference)} reference rows, {len(window)} window rows")
    rng = np.random.default_rng(seed)
    report = DriftReport(reference_rows=len(reference), window_rows=len(window), alpha=alpha)
    ref_emb, win_emb = _embeddings(reference), _embeddings(window)
    described = {c: (_values(reference, c), _values(window, c)) for c in ("length", "unknown_share")}
    described = {c: v for c, v in described.items() if min(len(v[0]), len(v[1])) >= MIN_DESCRIBED}
    tests = 2 + (ref_emb is not None and win_emb is not None) + len(described)
    bar = alpha / tests
    permutations = max(permutations, int(np.ceil(2 * tests / alpha)))  # the smallest p-value must clear the bar

    ks = stats.ks_2samp(reference["confidence"].to_numpy(), window["confidence"].to_numpy())
    report.tests.append(DriftTest("confidence", float(ks.statistic), float(ks.pvalue), bool(ks.pvalue < bar),
                                  f"median top score {reference['confidence'].median():.3f} -> "
                                  f"{window['confidence'].median():.3f}"))

    classes = int(max(reference["predicted"].max(), window["predicted"].max())) + 1
    counts = np.stack([np.bincount(reference["predicted"], minlength=classes),
                       np.bincount(window["predicted"], minlength=classes)])
    counts = _merge_rare(counts[:, counts.sum(axis=0) > 0])
    if counts.shape[1] > 1:
        chi2, p, _, _ = stats.chi2_contingency(counts)
        report.tests.append(DriftTest("predicted_class", float(chi2), float(p), bool(p < bar),
                                      f"{counts.shape[1]} class groups (rare classes pooled)"))

    for column, (ref_values, win_values) in described.items():
        ks = stats.ks_2samp(ref_values, win_values)
        report.tests.append(DriftTest(column, float(ks.statistic), float(ks.pvalue), bool(ks.pvalue < bar),
                                      f"median {np.median(ref_values):.3g} -> {np.median(win_values):.3g} "
                                      f"({len(ref_values)} and {len(win_values)} rows with a value)"))

    if ref_emb is not None and win_emb is not None:
        ref_emb = ref_emb[rng.permutation(len(ref_emb))[:max_rows]]
        win_emb = win_emb[rng.permutation(len(win_emb))[:max_rows]]
        statistic, p = mmd_test(ref_emb, win_emb, permutations, rng)
        report.tests.append(DriftTest("embedding", statistic, p, bool(p < bar),
                                      f"MMD² on {len(ref_emb)} + {len(win_emb)} projected embeddings"))
    return report


def _merge_rare(counts: np.ndarray, least: float = 5.0) -> np.ndarray:
    """Columns of a 2 x classes table whose expected count is under `least` in either row pooled into one
    (chi-squared's approximation needs that); the pool is dropped if it is still too small."""
    expected = counts.sum(axis=1, keepdims=True) * counts.sum(axis=0, keepdims=True) / max(counts.sum(), 1)
    rare = (expected < least).any(axis=0)
    if not rare.any():
        return counts
    pooled = counts[:, rare].sum(axis=1, keepdims=True)
    kept = counts[:, ~rare]
    pooled_expected = counts.sum(axis=1, keepdims=True) * pooled.sum() / max(counts.sum(), 1)
    return np.concatenate([kept, pooled], axis=1) if (pooled_expected >= least).all() else kept


def _values(frame: Any, column: str) -> np.ndarray:
    """The finite values of `column` (rows written before it, or that the preprocessor did not describe, have
    none; older profiles have no such column)."""
    if column not in frame:
        return np.zeros(0)
    values = frame[column].to_numpy(dtype=np.float64)
    return values[np.isfinite(values)]


def _embeddings(frame: Any) -> np.ndarray | None:
    values = [e for e in frame["embedding"] if e is not None and len(e)]
    return np.asarray(values, dtype=np.float32) if len(values) == len(frame) and values else None
