"""Compiled bootstrap kernel for :mod:`pipeline.estimate.rate` (numba; pure-NumPy fallback when numba is absent).

Every replicate streams once through the units in the full-sample priority order, skipping units whose
cluster was not drawn: a subset of a sorted order is sorted, so no replicate sorts. Each replicate computes
exactly what :func:`pipeline.estimate.rate._toc_stat` computes on the compressed subset (same additions in the
same order for the cumulative sums), including tie averaging and the fractional TOC grid.
"""

from __future__ import annotations

import numpy as np

try:  # pragma: no cover - exercised whichever way the environment goes
    import numba

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover
    numba = None
    HAVE_NUMBA = False


def _replicate(drw, w, group, cluster, chosen, has_ties, n_groups, q, qini, out):
    n = drw.shape[0]
    nq = q.shape[0]
    gavg = np.empty(1)
    if has_ties:
        gs1 = np.zeros(n_groups)
        gs2 = np.zeros(n_groups)
        for i in range(n):
            if chosen[cluster[i]]:
                gs1[group[i]] += drw[i]
                gs2[group[i]] += w[i]
        gavg = np.empty(n_groups)
        for g in range(n_groups):
            gavg[g] = gs1[g] / gs2[g] if gs2[g] > 0 else 0.0
    total = 0.0
    total_dw = 0.0
    for i in range(n):
        if chosen[cluster[i]]:
            d = gavg[group[i]] if has_ties else drw[i] / w[i]
            total += w[i]
            total_dw += d * w[i]
    ate = total_dw / total
    cw = 0.0
    cdw = 0.0
    acc = 0.0
    k = 0
    last_d = 0.0
    for i in range(n):
        if not chosen[cluster[i]]:
            continue
        d = gavg[group[i]] if has_ties else drw[i] / w[i]
        new_cw = cw + w[i]
        # grid points whose target weight lies before this unit's cumulative weight
        while k < nq and new_cw > q[k] * total + 1e-15:
            nw = q[k] * total
            if cw == 0.0:  # grf uses the first unit for both terms when no unit fits entirely
                first_cdw = d * w[i]
                adj = nw - new_cw
                out[1 + k] = (first_cdw + adj * d) / (new_cw + adj) - ate
            else:
                adj = nw - cw
                out[1 + k] = (cdw + adj * d) / (cw + adj) - ate
            k += 1
        cw = new_cw
        cdw += d * w[i]
        toc = cdw / cw - ate
        if qini:
            acc += cw / total * w[i] * toc
        else:
            acc += w[i] * toc
        last_d = d
    while k < nq:
        nw = q[k] * total
        adj = nw - cw
        out[1 + k] = (cdw + adj * last_d) / (cw + adj) - ate
        k += 1
    out[0] = acc / total


def _boot_python(drw, w, group, cluster, chosen, has_ties, n_groups, q, qini):
    out = np.empty((chosen.shape[0], 1 + q.shape[0]))
    for b in range(chosen.shape[0]):
        _replicate(drw, w, group, cluster, chosen[b], has_ties, n_groups, q, qini, out[b])
    return out


if HAVE_NUMBA:
    _replicate_nb = numba.njit(cache=True, nogil=True)(_replicate)

    @numba.njit(cache=True, parallel=True)
    def _boot_numba(drw, w, group, cluster, chosen, has_ties, n_groups, q, qini):  # pragma: no cover
        out = np.empty((chosen.shape[0], 1 + q.shape[0]))
        for b in numba.prange(chosen.shape[0]):
            _replicate_nb(drw, w, group, cluster, chosen[b], has_ties, n_groups, q, qini, out[b])
        return out


def bootstrap_statistics(drw, w, group, cluster, chosen, has_ties, n_groups, q, qini, compiled=True):
    """(n_boot, 1 + len(q)) replicate statistics: RATE then the TOC grid.

    Args:
        drw, w, group, cluster: per unit in decreasing-priority order: score x weight, weight, tie-group id
            (0.. in order), cluster id.
        chosen: (n_boot, n_clusters) bool, the clusters drawn by each replicate.
        compiled: use the numba kernel when available (the Python version is the reference).
    """
    args = (np.ascontiguousarray(drw, dtype=np.float64), np.ascontiguousarray(w, dtype=np.float64),
            np.ascontiguousarray(group, dtype=np.int64), np.ascontiguousarray(cluster, dtype=np.int64),
            np.ascontiguousarray(chosen, dtype=np.bool_), bool(has_ties), int(n_groups),
            np.ascontiguousarray(q, dtype=np.float64), bool(qini))
    if compiled and HAVE_NUMBA:
        return _boot_numba(*args)
    return _boot_python(*args)
