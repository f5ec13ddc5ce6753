r"""Rank-weighted average treatment effects (RATE), TOC curves and the RATE Ratio.

Definitions follow grf's ``rank_average_treatment_effect.fit`` (Yadlowsky, Fleming, Shah, Brunskill &
Wager, 2021, "Evaluating Treatment Prioritization Rules via Rank-Weighted Average Treatment Effects",
arXiv:2111.07966). Given doubly-robust scores :math:`\Gamma_i`, positive sample weights :math:`w_i`
(normalised to sum to one; all ones when not given) and priorities :math:`S_i` (higher = treat first):

1. Sort units by decreasing priority (stable: tied units keep their input order). Within a group of tied
   priorities, replace every :math:`\Gamma_i` by the group's weighted mean :math:`\bar\Gamma_g`.
2. With :math:`c_j = \sum_{k \le j} w_{(k)}` and :math:`W = c_n`:
   :math:`\mathrm{ATE} = \sum_j w_{(j)} \bar\Gamma_{(j)} / W` and
   :math:`\mathrm{TOC}_j = \sum_{k \le j} w_{(k)} \bar\Gamma_{(k)} / c_j - \mathrm{ATE}`.
3. AUTOC :math:`= \sum_j w_{(j)} \mathrm{TOC}_j / W`;
   QINI :math:`= \sum_j (c_j / W)\, w_{(j)} \mathrm{TOC}_j / W` (the TOC weighted by the treated share q).
4. The TOC on a grid of fractions q (default 0.1, ..., 1) uses :math:`qW` units of weight, taking a
   fraction of the next unit when :math:`qW` falls between two cumulative weights.
5. Standard errors: half-sample bootstrap over clusters (units when no clusters): each replicate keeps
   :math:`\lfloor K/2 \rfloor` of the K clusters without replacement; the SE is the standard deviation
   (n-1 denominator) of the replicate statistics. With two priority columns both rules are evaluated on
   the same draws and the difference (rule 1 - rule 2) is reported as the paired comparison.

The RATE Ratio is ``estimate / std_err``; under the null of no targetable heterogeneity it is
approximately standard normal, so ``|ratio| > 1.96`` is a 5 % test.

Speed: each bootstrap replicate of grf re-sorts its half sample. A half sample of clusters, in the order of
the full-sample sort, is already sorted, so here the data are sorted once and every replicate takes a
mask of that order (ties are grouped by the full-sample rank, which is the same grouping).

This module needs only scores and priorities: no forest, no torch.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd

from ..core.config import EvaluateConfig
from ..core.errors import DataWarning, EstimationError
from ._rate_kernel import bootstrap_statistics

TARGETS = ("AUTOC", "QINI")
DEFAULT_Q = np.round(np.arange(1, 11) / 10.0, 10)


@dataclass(frozen=True)
class RATEResult:
    """Result of :func:`rate`.

    Attributes:
        estimate: RATE point estimate (for two priority columns: rule 1 minus rule 2).
        std_err: half-sample bootstrap standard error of ``estimate``.
        target: "AUTOC" or "QINI".
        toc: table with columns ``priority``, ``q``, ``estimate``, ``std_err`` (TOC on the q grid; for two
            rules, rows for each rule and for their difference).
        n_boot: bootstrap replicates used.
        estimates: per rule (and difference) point estimates, in ``priorities`` order.
        std_errs: matching standard errors.
        boot: the (n_boot, k) replicate statistics (k = 1, or 3 for paired: rule 1, rule 2, difference).
    """

    estimate: float
    std_err: float
    target: str
    toc: pd.DataFrame
    n_boot: int
    estimates: tuple[float, ...] = ()
    std_errs: tuple[float, ...] = ()
    boot: np.ndarray = field(default=None, repr=False)
    fold_estimates: tuple[float, ...] = ()
    fold_std_errs: tuple[float, ...] = ()

    @property
    def ratio(self) -> float:
        """RATE Ratio = estimate / std_err (NaN when the SE is zero)."""
        return float(self.estimate / self.std_err) if self.std_err > 0 else float("nan")

    def interval(self, level: float = 0.95) -> tuple[float, float]:
        """Normal-approximation confidence interval."""
        from scipy.stats import norm

        z = float(norm.ppf(0.5 + level / 2))
        return self.estimate - z * self.std_err, self.estimate + z * self.std_err

    def p_value(self) -> float:
        """Two-sided p-value of RATE = 0 under the normal approximation."""
        from scipy.stats import norm

        r = self.ratio
        return float(2 * norm.sf(abs(r))) if np.isfinite(r) else float("nan")


def _as_float(name: str, x, n: int | None = None) -> np.ndarray:
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise EstimationError(name, "numbers", f"values of type {type(x).__name__}", "pass numeric arrays") from None
    if n is not None and arr.shape[0] != n:
        raise EstimationError(name, f"length {n} (as dr_scores)", f"length {arr.shape[0]}",
                              "pass one value per unit, in the same order")
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise EstimationError(name, "finite values", f"{bad} NaN/inf entries", "remove or impute those units")
    return arr


def _dense_rank(x: np.ndarray) -> np.ndarray:
    """Integer ranks 0..G-1 of the distinct values in increasing order (grf: as.integer(as.factor(x)))."""
    return np.unique(x, return_inverse=True)[1].reshape(-1)


def priority_rank(x: np.ndarray) -> np.ndarray:
    """Dense ranks of priorities with grf's ties: R's ``as.factor`` compares numbers as text with 15
    significant digits, so values that differ only beyond the 15th digit (``0.1 + 0.2`` and ``0.3``) are tied
    there, and here."""
    x = np.asarray(x, dtype=np.float64)
    return _dense_rank(np.char.mod("%.15g", x).astype(np.float64))


def _validate_q(q) -> np.ndarray:
    q = DEFAULT_Q if q is None else np.atleast_1d(np.asarray(q, dtype=np.float64))
    if q.ndim != 1 or q.size == 0 or not np.all(np.diff(q) > 0) or q[0] <= 0 or q[-1] != 1:
        raise EstimationError("q", "a strictly increasing grid of fractions in (0, 1] ending at 1",
                              f"{np.asarray(q).tolist()[:6]}...", "use e.g. numpy.linspace(0.05, 1, 20)")
    return q


class _Sorted:
    """One priority rule sorted once (decreasing priority, stable), with its tie groups."""

    def __init__(self, rank: np.ndarray, drw: np.ndarray, w: np.ndarray, cluster: np.ndarray):
        self.order = np.argsort(-rank, kind="stable")
        self.drw = drw[self.order]
        self.w = w[self.order]
        self.cluster = cluster[self.order]
        r = rank[self.order]
        self.has_ties = bool(np.any(r[1:] == r[:-1]))
        self.group = np.concatenate([[0], np.cumsum(r[1:] != r[:-1])]) if len(r) else r
        self.n_groups = int(self.group[-1]) + 1 if len(r) else 0

    def statistic(self, mask: np.ndarray | None, q: np.ndarray, target: str) -> np.ndarray:
        """RATE followed by the TOC on the grid, on the units where ``mask`` (None = all)."""
        if mask is None:
            drw, w, grp = self.drw, self.w, self.group
        else:
            drw, w, grp = self.drw[mask], self.w[mask], self.group[mask]
        if self.has_ties:
            s1 = np.bincount(grp, weights=drw, minlength=self.n_groups)
            s2 = np.bincount(grp, weights=w, minlength=self.n_groups)
            with np.errstate(invalid="ignore", divide="ignore"):
                avg = s1 / s2
            dr = avg[grp]
        else:
            dr = drw / w
        return _toc_stat(dr, w, q, target)


def _toc_stat(dr: np.ndarray, w: np.ndarray, q: np.ndarray, target: str) -> np.ndarray:
    """RATE and grid TOC for scores already sorted by decreasing priority (ties already averaged)."""
    dw = dr * w
    cw = np.cumsum(w)
    total = cw[-1]
    cdw = np.cumsum(dw)
    ate = cdw[-1] / total
    toc = cdw / cw - ate
    if target == "AUTOC":
        rate = np.sum(toc * w) / total
    else:
        rate = np.sum(cw / total * w * toc) / total
    nw = q * total
    idx = np.searchsorted(cw, nw + 1e-15, side="right")  # number of cumulative weights <= q W
    den_adj = nw - cw[np.maximum(idx, 1) - 1]
    num_adj = den_adj * dr[np.minimum(idx + 1, idx.max()) - 1]
    idx = np.maximum(idx, 1)
    toc_grid = (cdw[idx - 1] + num_adj) / (cw[idx - 1] + den_adj) - ate
    return np.concatenate([[rate], toc_grid])


def half_sample_draws(n_clusters: int, n_boot: int, seed: int | None) -> np.ndarray:
    """(n_boot, n_clusters) bool: replicate b keeps floor(n_clusters / 2) clusters drawn without replacement."""
    rng = np.random.default_rng(seed)
    chosen = np.zeros((n_boot, n_clusters), dtype=bool)
    for b in range(n_boot):
        chosen[b, rng.choice(n_clusters, n_clusters // 2, replace=False)] = True
    return chosen


def rate(dr_scores, priorities, *, target: str = "AUTOC", clusters=None, sample_weights=None, q=None,
         n_boot: int = EvaluateConfig.n_boot, seed: int | None = None, names: Sequence[str] | None = None
         ) -> RATEResult:
    """Estimate the RATE (AUTOC or QINI) of one priority rule, or compare two on the same bootstrap draws.

    Args:
        dr_scores: (n,) doubly-robust scores, e.g. from :func:`pipeline.estimate.cate.dr_scores`.
        priorities: (n,) or (n, 2) priorities, higher = treat first. They must come from a model that did
            not see these units' outcomes (cross-fitting), or the estimate is biased upwards.
        target: "AUTOC" (mean of the TOC) or "QINI" (TOC weighted by the treated share).
        clusters: (n,) cluster labels; the bootstrap resamples clusters. None = each unit its own cluster.
        sample_weights: (n,) positive weights; None = equal weights.
        q: grid of treated fractions for the TOC table (strictly increasing, in (0, 1], last = 1).
        n_boot: bootstrap replicates.
        seed: seed for the bootstrap draws (deterministic for a given seed).
        names: labels of the priority rules (default ``priority1``, ``priority2``).

    Returns:
        :class:`RATEResult`.

    Raises:
        EstimationError: naming the argument, for mismatched lengths, NaN/inf, non-positive weights, a bad q
            grid, fewer than 4 clusters (a half-sample needs at least 2), or an unknown target.
    """
    if target not in TARGETS:
        raise EstimationError("target", "'AUTOC' or 'QINI'", repr(target), "choose one of them")
    dr = _as_float("dr_scores", dr_scores)
    if dr.ndim != 1:
        raise EstimationError("dr_scores", "a 1-d array", f"shape {dr.shape}", "pass one score per unit")
    n = dr.shape[0]
    pr = _as_float("priorities", priorities, n)
    if pr.ndim == 1:
        pr = pr[:, None]
    if pr.ndim != 2 or pr.shape[1] not in (1, 2):
        raise EstimationError("priorities", "shape (n,) or (n, 2)", f"shape {pr.shape}", "pass one or two rules")
    if sample_weights is None:
        w = np.ones(n)
    else:
        w = _as_float("sample_weights", sample_weights, n)
        if np.any(w <= 0):
            raise EstimationError("sample_weights", "strictly positive weights",
                                  f"{int((w <= 0).sum())} weights <= 0", "drop zero-weight units explicitly")
        w = w / w.sum()
    if clusters is None:
        cl = np.arange(n)
    else:
        cl_raw = np.asarray(clusters)
        if cl_raw.shape[0] != n:
            raise EstimationError("clusters", f"length {n}", f"length {cl_raw.shape[0]}", "one label per unit")
        if pd.isna(pd.Series(cl_raw)).any():
            raise EstimationError("clusters", "no missing labels", "missing labels", "label every unit")
        cl = _dense_rank(cl_raw)
    n_clusters = int(cl.max()) + 1 if n else 0
    if n_clusters // 2 < 2:
        raise EstimationError("clusters", "at least 4 clusters (a half-sample must keep 2 or more)",
                              f"{n_clusters}", "collect more clusters; RATE cannot be bootstrapped here")
    if n_boot < 0:
        raise EstimationError("n_boot", "a non-negative number of replicates", str(n_boot), "use 200")
    q = _validate_q(q)
    k = pr.shape[1]
    labels = list(names) if names is not None else ["priority1", "priority2"][:k]
    ranks = [priority_rank(pr[:, j]) for j in range(k)]
    constant = [bool(np.all(r == 0)) for r in ranks]
    for j in range(k):
        if constant[j]:
            warnings.warn(f"priorities[{labels[j]}] is constant: its RATE is 0 by construction (and its RATE "
                          "Ratio undefined)", DataWarning, stacklevel=2)

    drw = dr * w
    rules = [_Sorted(ranks[j], drw, w, cl) for j in range(k)]
    t0 = np.stack([r.statistic(None, q, target) for r in rules])  # (k, 1 + len(q))

    chosen = half_sample_draws(n_clusters, n_boot, seed)
    boot = np.empty((n_boot, k, 1 + len(q)))
    for j, r in enumerate(rules):
        boot[:, j] = bootstrap_statistics(r.drw, r.w, r.group, r.cluster, chosen, r.has_ties, r.n_groups, q,
                                          target == "QINI")
    for j in range(k):  # a constant rule ranks nobody first: its TOC and RATE are 0 exactly, not rounding noise
        if constant[j]:
            t0[j] = 0.0
            boot[:, j] = 0.0

    est = t0
    se = boot.std(axis=0, ddof=1) if n_boot >= 2 else np.zeros_like(t0)
    if k == 2:
        est = np.vstack([est, est[0] - est[1]])
        diff = boot[:, 0] - boot[:, 1]
        se = np.vstack([se, diff.std(axis=0, ddof=1) if n_boot >= 2 else np.zeros_like(t0[0])])
        labels = labels + [f"{labels[0]} - {labels[1]}"]
    est = np.where(np.abs(est) < 1e-15, 0.0, est)
    se = np.where(np.abs(se) < 1e-15, 0.0, se)
    toc = pd.DataFrame({
        "priority": np.repeat(labels, len(q)),
        "q": np.tile(q, len(labels)),
        "estimate": est[:, 1:].reshape(-1),
        "std_err": se[:, 1:].reshape(-1),
    })
    boot_rate = boot[:, :, 0]
    if k == 2:
        boot_rate = np.column_stack([boot_rate, boot_rate[:, 0] - boot_rate[:, 1]])
    return RATEResult(estimate=float(est[-1, 0]), std_err=float(se[-1, 0]), target=target, toc=toc,
                      n_boot=n_boot, estimates=tuple(float(v) for v in est[:, 0]),
                      std_errs=tuple(float(v) for v in se[:, 0]), boot=boot_rate)


def combine_fold_rates(results: Sequence[RATEResult]) -> RATEResult:
    r"""Combine RATEs estimated on disjoint evaluation folds into one estimate and test.

    With fold estimates :math:`\hat\theta_k` and bootstrap SEs :math:`s_k` (k = 1..M), the combined estimate
    is :math:`\bar\theta = \frac1M \sum_k \hat\theta_k` with standard error
    :math:`\sqrt{\sum_k s_k^2} / M`. This is valid when, as with sequential cross-fitting, each fold's
    priorities and scores come from models fitted on earlier folds only: the centred fold estimates then
    form a martingale difference sequence, so they are uncorrelated and the ratio is asymptotically N(0, 1).
    TOC curves and paired differences are combined the same way, component by component.
    """
    if not results:
        raise EstimationError("results", "at least one fold result", "none", "evaluate at least one fold")
    targets = {r.target for r in results}
    if len(targets) != 1:
        raise EstimationError("results", "fold results of one target", str(sorted(targets)), "combine per target")
    m = len(results)
    est = np.mean([r.estimates for r in results], axis=0)
    se = np.sqrt(np.sum(np.square([r.std_errs for r in results]), axis=0)) / m
    tocs = [r.toc.reset_index(drop=True) for r in results]
    toc = tocs[0][["priority", "q"]].copy()
    toc["estimate"] = np.mean([t["estimate"].to_numpy() for t in tocs], axis=0)
    toc["std_err"] = np.sqrt(np.sum([t["std_err"].to_numpy() ** 2 for t in tocs], axis=0)) / m
    return RATEResult(estimate=float(est[-1]), std_err=float(se[-1]), target=results[0].target, toc=toc,
                      n_boot=results[0].n_boot, estimates=tuple(map(float, est)), std_errs=tuple(map(float, se)),
                      fold_estimates=tuple(r.estimate for r in results),
                      fold_std_errs=tuple(r.std_err for r in results))
