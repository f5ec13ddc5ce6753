"""Multi-scale Concatenation (Zhu, Jerzak & Daoud, CLeaR 2025, arXiv:2411.02134).

A scale set is a subset of the tiled scales. Its feature matrix joins, for every unit, the embeddings of
the unit's location at each scale of the set (for each chosen encoder), then the unit's pre-treatment
covariates. Any single-scale CATE learner fitted on this matrix becomes a multi-scale learner.

Scale-set specifications:

* ``singles`` — one set per scale (named by the scale);
* ``pairs`` — every pair of scales (``a+b``);
* ``all`` — all tiled scales (named ``all``);
* an explicit ``a+b+c`` naming tiled scales.
"""

from __future__ import annotations

import itertools
from typing import Mapping, Sequence

import numpy as np
from sklearn.base import BaseEstimator

from ..core.config import FeaturesConfig
from ..core.errors import ConfigError


def resolve_scale_sets(specs: Sequence[str], scales: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Expand scale-set specifications into ``{set name: scales}`` (insertion-ordered, no duplicates).

    Raises:
        ConfigError: naming the specification when it names a scale that was not tiled.
    """
    out: dict[str, tuple[str, ...]] = {}
    for spec in specs:
        if spec == "singles":
            for s in scales:
                out[s] = (s,)
        elif spec == "pairs":
            for a, b in itertools.combinations(scales, 2):
                out[f"{a}+{b}"] = (a, b)
        elif spec == "all":
            out["all"] = tuple(scales)
        else:
            parts = tuple(spec.split("+"))
            unknown = [p for p in parts if p not in scales]
            if unknown:
                raise ConfigError(f"features.scale_sets: {spec!r}", f"scales among {list(scales)}",
                                  f"unknown {unknown}", "name tiled scales, or use singles / pairs / all")
            out[spec] = parts
    return out


def concat_features(embeddings: Mapping[tuple[str, str], np.ndarray], scale_set: Sequence[str],
                    encoders: Sequence[str], unit_location_index: np.ndarray,
                    covariates: np.ndarray | None = None, covariate_names: Sequence[str] = (),
                    embedding_names: Mapping[tuple[str, str], Sequence[str]] | None = None
                    ) -> tuple[np.ndarray, list[str]]:
    """Build the unit-level feature matrix of one scale set.

    Args:
        embeddings: ``{(encoder, scale): (n_locations, dim)}``.
        scale_set: scales to join, in order.
        encoders: encoders to join at each scale.
        unit_location_index: (n_units,) row of each unit's location in the embedding arrays.
        covariates: optional (n_units, p) pre-treatment covariates, appended last.
        covariate_names: their names.
        embedding_names: optional column names per embedding (default ``d0, d1, ...``).

    Returns:
        (n_units, total_dim) float64 matrix and its column names ``encoder:scale:feature``.
    """
    blocks, names = [], []
    for scale in scale_set:
        for enc in encoders:
            emb = embeddings[(enc, scale)]
            blocks.append(emb[unit_location_index])
            cols = (embedding_names or {}).get((enc, scale)) or [f"d{i}" for i in range(emb.shape[1])]
            names += [f"{enc}:{scale}:{c}" for c in cols]
    if covariates is not None and covariates.shape[1]:
        blocks.append(covariates)
        names += [f"cov:{c}" for c in covariate_names]
    return np.hstack(blocks).astype(np.float64), names


class ScaleReducer:
    """Per-scale reduction before concatenation: drop constant columns, optionally standardise, optionally
    PCA to ``pca`` components. Fitted on features without outcomes (the locations' embeddings, or a
    learner's training rows), so fitting it is honest on every unit.

    Args:
        standardize: centre and scale each column (population SD).
        pca: number of principal components to keep (0 = no PCA).
        where: name used in error messages (e.g. ``encoder:scale``).
        key: the params key named by errors (``features.pca``).
    """

    def __init__(self, standardize: bool = False, pca: int = 0, where: str = "", key: str = "features.pca"):
        self.standardize = standardize
        self.pca = pca
        self.where = where
        self.key = key

    def fit(self, emb: np.ndarray) -> "ScaleReducer":
        """Learn the kept columns, their moments and the principal axes.

        Raises:
            ConfigError: more PCA components than rows or than (non-constant) columns.
        """
        self.keep_ = np.ptp(emb, axis=0) > 0
        b = emb[:, self.keep_]
        if self.standardize:
            self.mean_, self.std_ = b.mean(axis=0), b.std(axis=0)
            b = (b - self.mean_) / self.std_
        else:
            self.mean_ = self.std_ = None
        self.pca_ = None
        if self.pca:
            limit = min(b.shape)
            if self.pca > limit:
                raise ConfigError(self.key, f"at most min(rows, columns) = {limit} components for {self.where}",
                                  str(self.pca), f"set {self.key} to {limit} or fewer")
            from sklearn.decomposition import PCA

            self.pca_ = PCA(n_components=self.pca, svd_solver="full").fit(b)
        return self

    def transform(self, emb: np.ndarray) -> np.ndarray:
        b = emb[:, self.keep_]
        if self.mean_ is not None:
            b = (b - self.mean_) / self.std_
        return self.pca_.transform(b) if self.pca_ is not None else b

    def info(self) -> dict:
        """What the reduction did: dropped constant columns, explained variance of the PCA."""
        info: dict = {}
        if not self.keep_.all():
            info["dropped_constant_columns"] = int((~self.keep_).sum())
        if self.pca_ is not None:
            info["pca_explained_variance"] = float(self.pca_.explained_variance_ratio_.sum())
        return info


def reduce_embedding(emb: np.ndarray, standardize: bool, pca: int, where: str) -> tuple[np.ndarray, dict]:
    """Fit a :class:`ScaleReducer` on ``emb`` and apply it: the reduced array and what was done.

    Raises:
        ConfigError: more PCA components than locations or than (non-constant) columns.
    """
    reducer = ScaleReducer(standardize, pca, where).fit(emb)
    return reducer.transform(emb), reducer.info()


class MultiScaleLearner(BaseEstimator):
    """Multi-scale Concatenation around any single-scale CATE learner.

    The learner must have econml's shape: ``fit(Y, T, *, X, W=None, groups=None)``, ``effect(X)`` and
    optionally ``effect_interval(X, alpha=...)``. ``X`` is given per scale, as a mapping
    ``{scale name: (n, d_scale) array}``; the wrapper joins the scales of ``scale_set`` (in that order,
    optionally reduced per scale with a :class:`ScaleReducer` fitted on the training X only) and fits a
    clone of the learner on the joined matrix, so any single-scale learner becomes a multi-scale one.

    Args:
        learner: an unfitted CATE learner (cloned, never modified); default: the project's
            :class:`pipeline.estimate.cate.CausalForestCATE`.
        scale_set: scales to join; None = every scale given to ``fit``, in sorted order.
        standardize, pca: optional per-scale reduction (see :class:`ScaleReducer`).
    """

    def __init__(self, learner=None, scale_set: Sequence[str] | None = None,
                 standardize: bool = FeaturesConfig.standardize, pca: int = FeaturesConfig.pca):
        self.learner = learner
        self.scale_set = scale_set
        self.standardize = standardize
        self.pca = pca

    def _join(self, X: Mapping[str, np.ndarray], fit: bool) -> np.ndarray:
        missing = [s for s in self.scales_ if s not in X]
        if missing:
            raise ConfigError("X", f"features for scales {list(self.scales_)}", f"missing {missing}",
                              "pass one array per scale of the scale set")
        blocks = []
        for s in self.scales_:
            block = np.asarray(X[s], dtype=np.float64)
            if self.standardize or self.pca:
                if fit:
                    self.reducers_[s] = ScaleReducer(self.standardize, self.pca, f"scale {s}", "pca").fit(block)
                block = self.reducers_[s].transform(block)
            blocks.append(block)
        return np.hstack(blocks)

    def fit(self, Y, T, *, X: Mapping[str, np.ndarray], W=None, groups=None) -> "MultiScaleLearner":
        import copy

        from .cate import CausalForestCATE

        self.scales_ = tuple(self.scale_set) if self.scale_set is not None else tuple(sorted(X))
        self.reducers_ = {}
        learner = CausalForestCATE() if self.learner is None else self.learner
        try:
            from sklearn.base import clone

            self.learner_ = clone(learner)
        except TypeError:  # not a scikit-learn estimator: an independent copy
            self.learner_ = copy.deepcopy(learner)
        self.learner_.fit(Y, T, X=self._join(X, fit=True), W=W, groups=groups)
        return self

    def effect(self, X: Mapping[str, np.ndarray]):
        return self.learner_.effect(self._join(X, fit=False))

    def effect_interval(self, X: Mapping[str, np.ndarray], alpha: float = 0.05):
        return self.learner_.effect_interval(self._join(X, fit=False), alpha=alpha)
