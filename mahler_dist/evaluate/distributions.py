"""Generated against real bars, feature by feature, as Yang & Lerch 2018 compare two sets of music.

Reference: Li-Chia Yang and Alexander Lerch, "On the evaluation of generative models in music",
Neural Computing and Applications 32, 4773-4784 (2020; online 2018), section 4 ("absolute" and
"relative" measurements). Their method, for each feature of music_stats.py, here per bar:

1. Per-bar feature vectors (a scalar, or a histogram as a vector) of the real set R and the
   generated set G. Bars whose feature is NaN (repetition on a piece's first bar) are dropped;
   each set is then subsampled to at most `max_bars` bars, uniformly without replacement with a
   seeded generator (the same bars for every feature without NaN), so the pairwise step stays
   bounded at max_bars^2 distances.
2. Intra-set distances: the Euclidean distance between every two distinct bars of R (each
   unordered pair i < j once; i == j excluded). Inter-set distances: between every bar of R and
   every bar of G.
3. A Gaussian kernel density estimate of each set of distances, on one common grid of
   `grid_points` points spanning both sets of distances +- 4 bandwidths. Both KDEs take the same
   bandwidth, Scott's rule h = sigma n^(-1/5) (or Silverman's 0.9 min(sigma, IQR/1.34) n^(-1/5))
   over the pooled distances (sigma their standard deviation, n their number). The paper fits
   each KDE separately (scipy's default, Scott); one bandwidth keeps two identical distributions
   from differing by smoothing alone. The bandwidth has a floor of span / 200 (span = the range of
   the pooled distances; 1e-3 when that is 0): a feature on which every bar agrees has distances
   of zero variance, whose rule bandwidth would be 0. The KDE is computed by linear binning on the
   grid and a convolution with the sampled Gaussian (exact up to the grid's resolution, about a
   fifth of a bandwidth or finer), then normalised to probability masses P (intra) and Q (inter).
4. Overlapping area OA = sum_i min(P_i, Q_i) (the integral of min(p, q)), in [0, 1], 1 when the
   generated bars are as far from the real ones as real bars are from each other; and
   KL(P || Q) = sum_i P'_i log(P'_i / Q'_i) in nats, with P' = (P + eps) / (1 + grid_points eps)
   and Q' alike (eps = 1e-10 by default, so an empty cell of Q is finite): >= 0, 0 for identical
   distributions.

Against itself a set gets OA slightly below 1: its inter-set distances include the n pairs i == j
(distance 0) that the intra-set distances exclude, a 1/n share (0.25% at n = 400).

Beside OA and KL each feature's entry has the paper's absolute measures - the mean and standard
deviation of the feature over each set (all its non-NaN bars, not the subsample; lists for
histogram features) and of the intra-set distances of each set - and, for the histogram
features, the whole-set comparison `histogram_oa` / `histogram_kl` of the pooled count
histograms (every note or interval of a set counted once: music_stats.pooled_histograms).

Values that cannot be computed (a set with fewer than 2 bars has no intra-set distances, an empty
set no inter-set ones) are None, with the reason in "note", so that every entry is plain JSON.
numpy only: no torch, no Ray.
"""

from __future__ import annotations

import math

import numpy as np

from mahler_dist.evaluate.music_stats import FEATURES, HISTOGRAM_WEIGHTS, bar_features, histogram_weights

DEFAULT_MAX_BARS = 400
DEFAULT_GRID_POINTS = 1024
DEFAULT_EPS = 1e-10
MIN_BANDWIDTH_FRACTION = 1 / 200    # of the pooled distances' range
_CHUNK_ELEMENTS = 1 << 22           # floats per block of the pairwise difference


def histogram_oa(p, q) -> float:
    """Overlapping area of two histograms after normalising each to sum 1: sum of the minimum per
    bin, in [0, 1]. NaN when either is all zeros."""
    p, q = _normalised(p), _normalised(q)
    if p is None or q is None:
        return float("nan")
    return float(min(np.minimum(p, q).sum(), 1.0))


def histogram_kl(p, q, eps: float = DEFAULT_EPS) -> float:
    """KL(p || q) in nats of two histograms, each normalised to sum 1, then given `eps` per bin and
    normalised again (so an empty bin of q costs a finite amount). >= 0; NaN when either is all zeros."""
    p, q = _normalised(p), _normalised(q)
    if p is None or q is None:
        return float("nan")
    p, q = _smoothed(p, eps), _smoothed(q, eps)
    return float(max(np.sum(p * np.log(p / q)), 0.0))


def _normalised(h) -> np.ndarray | None:
    h = np.clip(np.asarray(h, dtype=np.float64).ravel(), 0, None)
    total = h.sum()
    return h / total if total > 0 else None


def _smoothed(p: np.ndarray, eps: float) -> np.ndarray:
    return (p + eps) / (1 + eps * len(p))


def pairwise_distances(a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """Euclidean distances [n_a, n_b] between the rows of a and b (float64; exact differences,
    not the |a|^2 + |b|^2 - 2ab shortcut, so identical rows are exactly 0); b = a when None."""
    a = _as_matrix(a)
    b = a if b is None else _as_matrix(b)
    out = np.empty((len(a), len(b)))
    step = max(1, _CHUNK_ELEMENTS // max(1, len(b) * a.shape[1]))
    for s in range(0, len(a), step):
        diff = a[s:s + step, None, :] - b[None, :, :]
        out[s:s + step] = np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))
    return out


def intra_set_distances(a: np.ndarray) -> np.ndarray:
    """Distances between every two distinct rows of a, each pair once (i < j)."""
    a = _as_matrix(a)
    if len(a) < 2:
        return np.zeros(0)
    i, j = np.triu_indices(len(a), k=1)
    return pairwise_distances(a)[i, j]


def inter_set_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distances between every row of a and every row of b."""
    return pairwise_distances(a, b).ravel()


def _as_matrix(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x[:, None] if x.ndim == 1 else x


def bandwidth(samples: np.ndarray, rule: str = "scott") -> float:
    """Gaussian KDE bandwidth of 1-D `samples` by Scott's or Silverman's rule, floored (see the
    module docstring) so that it is never 0."""
    samples = np.asarray(samples, dtype=np.float64)
    n = len(samples)
    span = float(samples.max() - samples.min()) if n else 0.0
    floor = MIN_BANDWIDTH_FRACTION * span if span > 0 else 1e-3
    if n < 2:
        return floor
    sigma = float(samples.std(ddof=1))
    if rule == "scott":
        h = sigma * n ** (-1 / 5)
    elif rule == "silverman":
        q75, q25 = np.percentile(samples, [75, 25])
        spread = min(sigma, (q75 - q25) / 1.34) if q75 > q25 else sigma
        h = 0.9 * spread * n ** (-1 / 5)
    else:
        raise ValueError(f"bandwidth rule {rule!r}: use 'scott' or 'silverman'")
    return max(h, floor)


def kde_masses(samples: list[np.ndarray], rule: str = "scott", grid_points: int = DEFAULT_GRID_POINTS
               ) -> tuple[np.ndarray, list[np.ndarray], float]:
    """Gaussian KDEs of several 1-D samples on one grid with one bandwidth (pooled rule).

    Returns (grid [G], [probability masses [G] per sample, each summing to 1], bandwidth)."""
    pooled = np.concatenate(samples)
    h = bandwidth(pooled, rule)
    lo, hi = float(pooled.min()) - 4 * h, float(pooled.max()) + 4 * h
    grid = np.linspace(lo, hi, grid_points)
    dx = grid[1] - grid[0]
    half = min((grid_points - 1) // 2, int(math.ceil(4 * h / dx)))   # the kernel never outgrows the grid
    kernel = np.exp(-0.5 * (np.arange(-half, half + 1) * dx / h) ** 2)
    kernel /= kernel.sum()
    masses = []
    for x in samples:
        pos = (np.asarray(x, dtype=np.float64) - lo) / dx
        i = np.clip(np.floor(pos).astype(np.int64), 0, grid_points - 2)
        frac = np.clip(pos - i, 0.0, 1.0)
        binned = (np.bincount(i, weights=1 - frac, minlength=grid_points)
                  + np.bincount(i + 1, weights=frac, minlength=grid_points))
        smooth = np.clip(np.convolve(binned, kernel, mode="same"), 0, None)
        masses.append(smooth / smooth.sum())
    return grid, masses, h


def overlap_and_kl(intra: np.ndarray, inter: np.ndarray, rule: str = "scott",
                   grid_points: int = DEFAULT_GRID_POINTS, eps: float = DEFAULT_EPS) -> dict[str, float]:
    """OA and KL(intra || inter) of the KDEs of two sets of distances: {"oa", "kl", "bandwidth"}."""
    _, (p, q), h = kde_masses([intra, inter], rule, grid_points)
    p_s, q_s = _smoothed(p, eps), _smoothed(q, eps)
    return {"oa": float(min(np.minimum(p, q).sum(), 1.0)),
            "kl": float(max(np.sum(p_s * np.log(p_s / q_s)), 0.0)),
            "bandwidth": float(h)}


def _subsample(n: int, max_bars: int, seed: int) -> np.ndarray:
    if n <= max_bars:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, max_bars, replace=False))


def _num(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _stat(values: np.ndarray, fn) -> float | list[float | None] | None:
    if not len(values):
        return None
    v = fn(values, axis=0)
    return _num(v) if np.ndim(v) == 0 else [_num(e) for e in v]


def compare_feature(real: np.ndarray, generated: np.ndarray, *, max_bars: int = DEFAULT_MAX_BARS,
                    seed: int = 0, rule: str = "scott", grid_points: int = DEFAULT_GRID_POINTS,
                    eps: float = DEFAULT_EPS, real_weights: np.ndarray | None = None,
                    generated_weights: np.ndarray | None = None) -> dict:
    """One feature's entry of `compare_sets` (per-bar values [B] or [B, d] of each set)."""
    real, generated = _as_matrix(real), _as_matrix(generated)
    keep_r = ~np.isnan(real).any(axis=1)
    keep_g = ~np.isnan(generated).any(axis=1)
    r_all, g_all = real[keep_r], generated[keep_g]
    scalar = real.shape[1] == 1
    squeeze = (lambda v: v[:, 0]) if scalar else (lambda v: v)
    r = r_all[_subsample(len(r_all), max_bars, seed)]
    g = g_all[_subsample(len(g_all), max_bars, seed + 1)]
    entry: dict = {
        "oa": None, "kl": None,
        "real_mean": _stat(squeeze(r_all), np.mean), "generated_mean": _stat(squeeze(g_all), np.mean),
        "real_std": _stat(squeeze(r_all), np.std), "generated_std": _stat(squeeze(g_all), np.std),
        "n_real": int(len(r_all)), "n_generated": int(len(g_all)),
        "n_real_used": int(len(r)), "n_generated_used": int(len(g)),
        "real_intra_mean": None, "real_intra_std": None,
        "generated_intra_mean": None, "generated_intra_std": None,
        "inter_mean": None, "inter_std": None, "bandwidth": None,
    }
    intra_r, intra_g = intra_set_distances(r), intra_set_distances(g)
    inter = inter_set_distances(r, g) if len(r) and len(g) else np.zeros(0)
    for key, d in (("real_intra", intra_r), ("generated_intra", intra_g), ("inter", inter)):
        if len(d):
            entry[f"{key}_mean"], entry[f"{key}_std"] = _num(d.mean()), _num(d.std())
    notes = []
    if len(intra_r) == 0:
        notes.append(f"the real set has {len(r)} usable bar(s): no intra-set distances")
    if len(inter) == 0:
        notes.append("a set is empty: no inter-set distances")
    if not notes:
        result = overlap_and_kl(intra_r, inter, rule, grid_points, eps)
        entry["oa"], entry["kl"], entry["bandwidth"] = _num(result["oa"]), _num(result["kl"]), _num(result["bandwidth"])
    if real_weights is not None and generated_weights is not None:
        hr = (r_all * np.asarray(real_weights, np.float64)[keep_r][:, None]).sum(axis=0)
        hg = (g_all * np.asarray(generated_weights, np.float64)[keep_g][:, None]).sum(axis=0)
        entry["set_histogram_oa"] = _num(histogram_oa(hr, hg))
        entry["set_histogram_kl"] = _num(histogram_kl(hr, hg, eps))
    if notes:
        entry["note"] = "; ".join(notes)
    return entry


def compare_sets(real: dict[str, np.ndarray], generated: dict[str, np.ndarray], *,
                 features: tuple[str, ...] | None = None, max_bars: int = DEFAULT_MAX_BARS, seed: int = 0,
                 rule: str = "scott", grid_points: int = DEFAULT_GRID_POINTS,
                 eps: float = DEFAULT_EPS) -> dict[str, dict]:
    """Yang & Lerch's comparison of two sets of per-bar features (music_stats.bar_features output):
    {feature: entry}, every entry plain JSON (see the module docstring and compare_feature)."""
    out = {}
    for name in features or tuple(FEATURES):
        weights = {}
        if name in HISTOGRAM_WEIGHTS:
            weights = {"real_weights": histogram_weights(real, name),
                       "generated_weights": histogram_weights(generated, name)}
        out[name] = compare_feature(real[name], generated[name], max_bars=max_bars, seed=seed,
                                    rule=rule, grid_points=grid_points, eps=eps, **weights)
    return out


def compare_pieces(real_pieces, generated_pieces, **kwargs) -> dict[str, dict]:
    """compare_sets on the features of two lists of pieces (music_stats.bar_features' input)."""
    return compare_sets(bar_features(real_pieces), bar_features(generated_pieces), **kwargs)
