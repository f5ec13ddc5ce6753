"""The project's compiled causal forest: econml's ``CausalForest`` algorithm (honest GRF trees, subsampling
in groups of trees that share a half-sample, bootstrap-of-little-bags variance), grown by numba kernels
(:mod:`pipeline.estimate._forest_kernel`) on threads that release the GIL.

Same interface as the econml forest the final stage used (``fit(X, T, y)``, ``predict``,
``predict_and_var``, ``feature_importances_``), same parameters and the same estimator; what differs is the
split rule, which is grf's (pseudo-outcomes of the parent's slope, sum over children of squared sums over
sizes) where econml's default ``mse`` criterion weights a two-dimensional version of it, and the random
streams. econml's forest stays the reference learner (``cate.forest: econml``); ``tests/test_forest.py``
checks that the two agree statistically (estimates, interval coverage, RATE) on the same data.

Every tree draws its rows and features from its own seed, so the forest is bitwise the same for any number
of threads, and predictions sum trees in a fixed order.
"""

from __future__ import annotations

import numpy as np

from ..core.compute import n_threads, thread_map
from ..core.errors import EstimationError

GROUP_SIZE = 4  # trees per half-sample (econml's subforest_size)
IMPORTANCE_DEPTH = 4  # splits up to this depth count in the importances (econml's default)


def presort(n_split: int, p: int, mtry: int) -> bool:
    """Whether trees keep every feature's rows sorted (each split then moves p row lists) rather than sort a
    node's rows by each feature it tries (mtry sorts of log2 n comparisons per row): the cheaper of the two by
    operation count. Either grows the same kind of tree; the choice depends on the shape of the data only."""
    return p <= mtry * max(1.0, np.log2(max(n_split, 2))) / 2


class CompiledCausalForest:
    """An honest causal forest with inference (econml ``CausalForest(fit_intercept=True, inference=True,
    honest=True)``), compiled.

    Args:
        n_estimators: trees, a multiple of 4 (groups of 4 share a half-sample for the variance).
        min_samples_leaf: smallest leaf, on both the splitting and the honest half.
        max_samples: rows per tree as a fraction of n (<= 0.5), half of them for splitting.
        max_features: features tried at each split (int; None: all).
        min_samples_split: smallest node that may split (splitting half).
        min_balancedness_tol: each child keeps at least (0.5 - tol) of its parent's rows (both halves).
        n_jobs: threads (-1: all cores).
        random_state: seed.
    """

    def __init__(self, n_estimators: int = 100, min_samples_leaf: int = 5, max_samples: float = 0.45,
                 max_features: int | None = None, min_samples_split: int = 10, min_balancedness_tol: float = 0.45,
                 n_jobs: int = -1, random_state: int = 0):
        self.n_estimators = n_estimators
        self.min_samples_leaf = min_samples_leaf
        self.max_samples = max_samples
        self.max_features = max_features
        self.min_samples_split = min_samples_split
        self.min_balancedness_tol = min_balancedness_tol
        self.n_jobs = n_jobs
        self.random_state = random_state

    def _check(self, n: int) -> int:
        if self.n_estimators < GROUP_SIZE or self.n_estimators % GROUP_SIZE:
            raise EstimationError("cate.n_estimators", f"a multiple of {GROUP_SIZE}", str(self.n_estimators),
                                  f"use e.g. {max(GROUP_SIZE, self.n_estimators // GROUP_SIZE * GROUP_SIZE)}")
        if not 0 < self.max_samples <= 0.5:
            raise EstimationError("cate.max_samples", "a fraction in (0, 0.5] (forest inference)",
                                  str(self.max_samples), "use 0.45")
        n_sub = int(np.floor(self.max_samples * n))  # econml's rounding
        if n_sub < 2:
            raise EstimationError("X", f"at least 2 rows in a subsample of {self.max_samples:g} n", f"{n} rows",
                                  "collect more units")
        return n_sub

    def fit(self, X, T, y) -> "CompiledCausalForest":
        """Grow the forest on features ``X`` (n, p), a single treatment ``T`` (n,) or (n, 1) and outcome ``y``."""
        from ._forest_kernel import grow_block

        X = np.ascontiguousarray(X, dtype=np.float64)
        t = np.ascontiguousarray(np.asarray(T, dtype=np.float64).reshape(-1))
        y = np.ascontiguousarray(np.asarray(y, dtype=np.float64).reshape(-1))
        if X.ndim != 2 or len(t) != len(X) or len(y) != len(X):
            raise EstimationError("X, T, y", "X (n, p) and T, y with n rows", f"{X.shape}, {t.shape}, {y.shape}",
                                  "pass one treatment column and one outcome")
        n, p = X.shape
        n_sub = self._check(n)
        mtry = p if self.max_features is None else int(min(max(1, self.max_features), p))
        rng = np.random.default_rng(self.random_state)
        n_groups = self.n_estimators // GROUP_SIZE
        group_seeds = rng.integers(0, 2 ** 63, n_groups, dtype=np.uint64)
        tree_seeds = rng.integers(0, 2 ** 63, self.n_estimators, dtype=np.uint64)
        eps_var = 1e-12 * max(float(np.var(t)), 1e-300)
        presorted = presort(n_sub // 2, p, mtry)
        order = (np.ascontiguousarray(np.argsort(X, axis=0, kind="stable").T) if presorted  # (p, n)
                 else np.empty((0, 0), dtype=np.int64))
        args = (np.ascontiguousarray(X.T), t, y, order, presorted)
        opts = (GROUP_SIZE, group_seeds, tree_seeds, n_sub, mtry, int(self.min_samples_leaf),
                int(self.min_samples_split), 0.5 - float(self.min_balancedness_tol), eps_var, IMPORTANCE_DEPTH)
        threads = n_threads(self.n_jobs)
        blocks = np.array_split(np.arange(self.n_estimators), min(self.n_estimators, 4 * threads))
        parts = thread_map(lambda b: grow_block(*args, b, *opts), blocks, threads)
        shift = np.cumsum([0] + [len(part[0]) for part in parts[:-1]])
        self.feature_ = np.concatenate([part[0] for part in parts])
        self.threshold_ = np.concatenate([part[1] for part in parts])
        self.left_ = np.concatenate([part[2] for part in parts])
        self.leaf_stats_ = np.concatenate([part[3] for part in parts])
        self.offsets_ = np.concatenate([[0]] + [part[4][1:] + s for part, s in zip(parts, shift)]).astype(np.int64)
        self._importances = np.concatenate([part[5] for part in parts])
        self.n_features_in_, self.n_rows_, self.n_sub_ = p, n, n_sub
        self.group_seeds_, self.tree_seeds_ = group_seeds, tree_seeds
        return self

    def tree_rows(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        """The rows of tree ``b``: (splitting rows, honest rows whose means fill its leaves)."""
        from ._forest_kernel import tree_rows

        rows = tree_rows(self.n_rows_, self.group_seeds_[b // GROUP_SIZE], self.tree_seeds_[b], self.n_sub_,
                         np.empty(self.n_rows_, dtype=np.int64), np.zeros(1, dtype=np.uint64))
        return rows[:self.n_sub_ // 2], rows[self.n_sub_ // 2:]

    @property
    def node_count(self) -> int:
        return int(self.offsets_[-1])

    @property
    def feature_importances_(self) -> np.ndarray:
        """Econml's heterogeneity importances: per split (depth <= 4) n_left n_right (theta_left -
        theta_right)^2 / n / (1 + depth)^2, normalised per tree, averaged over trees that split, normalised."""
        imps = self._importances
        sums = imps.sum(axis=1)
        keep = sums > 0
        if not keep.any():
            return np.zeros(self.n_features_in_)
        mean = (imps[keep] / sums[keep, None]).mean(axis=0)
        return mean / mean.sum()

    def _predict(self, X, with_var: bool):
        from ._forest_kernel import predict_rows

        X = np.ascontiguousarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise EstimationError("X", f"(n, {self.n_features_in_}) features as in fit", f"shape {X.shape}",
                                  "pass the same columns as in fit")
        n = len(X)
        point, var = np.empty(n), np.empty(n if with_var else 0)
        tree = (self.feature_, self.threshold_, self.left_, self.leaf_stats_, self.offsets_, GROUP_SIZE, with_var)

        def run(lohi):
            lo, hi = lohi
            predict_rows(X, lo, hi, *tree, point[lo:hi], var[lo:hi] if with_var else var)

        threads = min(n_threads(self.n_jobs), max(1, n // 64))
        edges = np.linspace(0, n, 4 * threads + 1).astype(int)
        thread_map(run, [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a], threads)
        return point, var

    def predict(self, X) -> np.ndarray:
        """CATE point estimates, (n, 1) as econml's."""
        return self._predict(X, False)[0].reshape(-1, 1)

    def predict_and_var(self, X) -> tuple[np.ndarray, np.ndarray]:
        """Point estimates (n, 1) and variances (n, 1, 1), as econml's ``predict_and_var``."""
        point, var = self._predict(X, True)
        return point.reshape(-1, 1), var.reshape(-1, 1, 1)
