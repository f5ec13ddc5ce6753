"""Compiled kernels of :class:`pipeline.estimate.forest.CompiledCausalForest` (numba, ``nogil``).

Tree growing and prediction follow econml's ``CausalForest`` with ``fit_intercept=True`` (generalized random
forests, Athey, Tibshirani & Wager 2019): the local moment of a leaf is E[(y - beta - theta t)(t, 1)] = 0, i.e.
theta is the slope of y on t with an intercept. Splits maximise grf's criterion on the pseudo-outcomes

    rho_i = (t_i - tbar)((y_i - ybar) - theta_P (t_i - tbar)) / var_P(t)

(the gradient approximation of the parent's estimate), sum over children of (sum of rho)^2 / size. Every
random choice of a tree comes from its own seed (a splitmix64 stream), so a tree is the same whichever thread
grows it, and the forest is bitwise the same for any number of threads.

Layout of a grown block of trees: flat node arrays (feature, threshold, left child (the right one is
left + 1), and for leaves the
honest-half means of t, y, t^2 and t y) with per-tree offsets; ``left == -1`` marks a leaf.
"""

from __future__ import annotations

import math

import numba
import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)


@numba.njit(cache=True, nogil=True)
def _next(state):
    """splitmix64: the next 64-bit draw of ``state`` (a one-element uint64 array, advanced in place)."""
    state[0] += _GOLDEN
    z = state[0]
    z = (z ^ (z >> _S30)) * _MIX1
    z = (z ^ (z >> _S27)) * _MIX2
    return z ^ (z >> _S31)


@numba.njit(cache=True, nogil=True)
def _below(state, k):
    """A uniform integer in [0, k) (k < 2^32: the modulo bias is below 2^-32)."""
    return np.int64(_next(state) % np.uint64(k))


@numba.njit(cache=True, nogil=True)
def _partial_shuffle(a, k, state):
    """Fisher-Yates on the first ``k`` positions of ``a``: they become a uniform draw without replacement."""
    n = a.shape[0]
    for i in range(k):
        j = i + _below(state, n - i)
        tmp = a[i]
        a[i] = a[j]
        a[j] = tmp


@numba.njit(cache=True, nogil=True)
def _moments(t, y, rows, lo, hi):
    """Sums of t, y, t^2, t y over rows[lo:hi]."""
    st = sy = stt = sty = 0.0
    for k in range(lo, hi):
        i = rows[k]
        st += t[i]
        sy += y[i]
        stt += t[i] * t[i]
        sty += t[i] * y[i]
    return st, sy, stt, sty


@numba.njit(cache=True, nogil=True)
def _slope(n, st, sy, stt, sty, eps_var):
    """(theta, var t) of the least-squares line of y on t over n rows; theta = 0 when var t <= eps_var."""
    tbar = st / n
    vt = stt / n - tbar * tbar
    if vt <= eps_var:
        return 0.0, vt
    return (sty / n - tbar * sy / n) / vt, vt


@numba.njit(cache=True, nogil=True)
def _sort_pairs(keys, vals, n, stack):
    """Sort keys[:n] ascending in place, carrying vals[:n] along (quicksort with a median-of-three pivot and
    an explicit stack, insertion sort below 16 elements; no allocation). ``stack``: int64 scratch of at least
    2 * (2 log2 n + 2) entries."""
    top = 0
    stack[0], stack[1] = 0, n - 1
    top = 2
    while top > 0:
        top -= 2
        lo, hi = stack[top], stack[top + 1]
        while hi - lo >= 16:
            mid = (lo + hi) >> 1
            # median of three to keys[mid]
            if keys[mid] < keys[lo]:
                keys[mid], keys[lo] = keys[lo], keys[mid]
                vals[mid], vals[lo] = vals[lo], vals[mid]
            if keys[hi] < keys[lo]:
                keys[hi], keys[lo] = keys[lo], keys[hi]
                vals[hi], vals[lo] = vals[lo], vals[hi]
            if keys[hi] < keys[mid]:
                keys[hi], keys[mid] = keys[mid], keys[hi]
                vals[hi], vals[mid] = vals[mid], vals[hi]
            pivot = keys[mid]
            i, j = lo, hi
            while i <= j:
                while keys[i] < pivot:
                    i += 1
                while keys[j] > pivot:
                    j -= 1
                if i <= j:
                    keys[i], keys[j] = keys[j], keys[i]
                    vals[i], vals[j] = vals[j], vals[i]
                    i += 1
                    j -= 1
            # recurse into the smaller side later (pushed), loop on the larger: the stack stays O(log n)
            if j - lo < hi - i:
                if i < hi:
                    stack[top], stack[top + 1] = i, hi
                    top += 2
                hi = j
            else:
                if lo < j:
                    stack[top], stack[top + 1] = lo, j
                    top += 2
                lo = i
        for k in range(lo + 1, hi + 1):
            key, val = keys[k], vals[k]
            j = k - 1
            while j >= lo and keys[j] > key:
                keys[j + 1] = keys[j]
                vals[j + 1] = vals[j]
                j -= 1
            keys[j + 1] = key
            vals[j + 1] = val


@numba.njit(cache=True, nogil=True)
def _stable_split(seg, a, b, goes_left, buf):
    """Stable partition of seg[a:b] (row ids): rows with goes_left first, order kept on both sides."""
    k = a
    r = 0
    for j in range(a, b):
        i = seg[j]
        if goes_left[i]:
            seg[k] = i
            k += 1
        else:
            buf[r] = i
            r += 1
    for j in range(r):
        seg[k + j] = buf[j]


@numba.njit(cache=True, nogil=True)
def _grow_tree(XT, t, y, sorted_tr, sorted_va, presorted, mtry, min_leaf, min_split, bal, eps_var, max_imp_depth,
               state, feat, thr, left, stats, imp, rho, goes_left, buf):
    """Grow one honest tree. With ``presorted``, ``sorted_tr[f]`` / ``sorted_va[f]`` hold the tree's splitting /
    honest rows sorted by feature f; every node owns the same range of each row (stable partitions keep them
    sorted), so no node sorts, but every split moves all p features. Otherwise ``sorted_tr[0]`` /
    ``sorted_va[0]`` hold the rows in any order and a node sorts its rows by each feature it tries (cheaper
    when few of many features are tried). Splits are chosen on the splitting rows (grf's criterion); leaf
    means come from the honest rows. Node arrays are filled from 0 (right child = left + 1); returns the number
    of nodes. ``imp`` (p,) receives the tree's heterogeneity importances (econml's definition, splits up to
    ``max_imp_depth``)."""
    p = XT.shape[0]
    n_tr, n_va = sorted_tr.shape[1], sorted_va.shape[1]
    features = np.arange(p)
    xs = np.empty(n_tr)
    rs = np.empty(n_tr)
    xv = np.empty(n_va)
    xv_carry = np.zeros(n_va)
    qstack = np.empty(2 * (2 * 64 + 2), dtype=np.int64)
    cap = feat.shape[0]
    s_id = np.empty(cap, dtype=np.int64)
    s_rng = np.empty((cap, 4), dtype=np.int64)
    s_depth = np.empty(cap, dtype=np.int64)
    s_id[0], s_depth[0] = 0, 0
    s_rng[0, 0], s_rng[0, 1], s_rng[0, 2], s_rng[0, 3] = 0, n_tr, 0, n_va
    top = 1
    n_nodes = 1
    rows0 = sorted_tr[0]
    vrows0 = sorted_va[0]
    while top > 0:
        top -= 1
        node, depth = s_id[top], s_depth[top]
        a, b, c, d = s_rng[top, 0], s_rng[top, 1], s_rng[top, 2], s_rng[top, 3]
        n, m = b - a, d - c
        st, sy, stt, sty = _moments(t, y, rows0, a, b)
        theta, vt = _slope(n, st, sy, stt, sty, eps_var)
        best_f, best_thr, best_score, best_k = -1, 0.0, 0.0, 0
        if n >= min_split and n >= 2 * min_leaf and m >= 2 * min_leaf and vt > eps_var:
            tbar, ybar = st / n, sy / n
            total = 0.0
            for k in range(a, b):
                i = rows0[k]
                dt = t[i] - tbar
                rho[i] = dt * ((y[i] - ybar) - theta * dt) / vt
                total += rho[i]
            n_min = max(min_leaf, int(math.ceil(bal * n)))
            m_min = max(min_leaf, int(math.ceil(bal * m)))
            _partial_shuffle(features, min(mtry, p), state)
            for q in range(min(mtry, p)):
                f = features[q]
                # the node's splitting values of f in ascending order with their rho, and its honest values
                if presorted:  # already in order: gather
                    for k in range(n):
                        i = sorted_tr[f, a + k]
                        xs[k] = XT[f, i]
                        rs[k] = rho[i]
                    for k in range(m):
                        xv[k] = XT[f, sorted_va[f, c + k]]
                else:  # sort (numba's ndarray.sort is slower than this on a node's few dozen values)
                    for k in range(n):
                        i = rows0[a + k]
                        xs[k] = XT[f, i]
                        rs[k] = rho[i]
                    _sort_pairs(xs, rs, n, qstack)
                    for k in range(m):
                        xv[k] = XT[f, vrows0[c + k]]
                    _sort_pairs(xv, xv_carry, m, qstack)
                if xs[0] >= xs[n - 1]:
                    continue  # constant in this node
                s_left = 0.0
                vp = 0
                for k in range(n - 1):
                    s_left += rs[k]
                    n_left = k + 1
                    if n - n_left < n_min:
                        break
                    if n_left < n_min:
                        continue
                    lo_x, hi_x = xs[k], xs[k + 1]
                    if hi_x <= lo_x:
                        continue
                    cut = lo_x + (hi_x - lo_x) / 2.0
                    if cut >= hi_x:
                        cut = lo_x
                    while vp < m and xv[vp] <= cut:
                        vp += 1
                    if m - vp < m_min:
                        break
                    if vp < m_min:
                        continue
                    s_right = total - s_left
                    score = s_left * s_left / n_left + s_right * s_right / (n - n_left)
                    if score > best_score:
                        best_f, best_thr, best_score, best_k = f, cut, score, n_left
        if best_f < 0 or best_score <= 0.0 or n_nodes + 2 > cap:
            feat[node] = -1
            left[node] = -1
            vst, vsy, vstt, vsty = _moments(t, y, vrows0, c, d)
            stats[node, 0] = vst / m
            stats[node, 1] = vsy / m
            stats[node, 2] = vstt / m
            stats[node, 3] = vsty / m
            continue
        for k in range(a, b):
            i = rows0[k]
            goes_left[i] = XT[best_f, i] <= best_thr
        m_left = 0
        for k in range(c, d):
            i = vrows0[k]
            goes_left[i] = XT[best_f, i] <= best_thr
            m_left += goes_left[i]
        for g in range(sorted_tr.shape[0]):
            _stable_split(sorted_tr[g], a, b, goes_left, buf)
            _stable_split(sorted_va[g], c, d, goes_left, buf)
        k_tr, k_va = a + best_k, c + m_left
        if depth <= max_imp_depth:
            nl, nr = k_tr - a, b - k_tr
            l_theta, l_vt = _slope(nl, *_moments(t, y, rows0, a, k_tr), eps_var)
            r_theta, r_vt = _slope(nr, *_moments(t, y, rows0, k_tr, b), eps_var)
            if l_vt > eps_var and r_vt > eps_var:
                imp[best_f] += nl * nr * (l_theta - r_theta) ** 2 / n / (1.0 + depth) ** 2
        feat[node] = best_f
        thr[node] = best_thr
        left[node] = n_nodes
        s_id[top], s_depth[top] = n_nodes + 1, depth + 1
        s_rng[top, 0], s_rng[top, 1], s_rng[top, 2], s_rng[top, 3] = k_tr, b, k_va, d
        top += 1
        s_id[top], s_depth[top] = n_nodes, depth + 1
        s_rng[top, 0], s_rng[top, 1], s_rng[top, 2], s_rng[top, 3] = a, k_tr, c, k_va
        top += 1
        n_nodes += 2
    return n_nodes


@numba.njit(cache=True, nogil=True)
def tree_rows(n, group_seed, tree_seed, n_sub, rows, state):
    """The rows of one tree: its group's half-sample (n // 2 rows drawn with ``group_seed``), then ``n_sub``
    of them drawn with ``tree_seed``, in random order; the first ``n_sub // 2`` choose the splits, the rest
    fill the leaves. ``rows`` (n,) is scratch; ``state`` is left at the tree's stream."""
    for i in range(n):
        rows[i] = i
    state[0] = group_seed
    _partial_shuffle(rows, n // 2, state)
    half = rows[:n // 2].copy()
    state[0] = tree_seed
    _partial_shuffle(half, n_sub, state)
    return half[:n_sub].copy()


@numba.njit(cache=True, nogil=True)
def grow_block(XT, t, y, order, presorted, tree_ids, group_size, group_seeds, tree_seeds, n_sub, mtry, min_leaf,
               min_split, bal, eps_var, max_imp_depth):
    """Grow the trees ``tree_ids`` on features ``XT`` (p, n: feature-major, so that a node's values of one
    feature sit in one row of memory). With ``presorted``, ``order[f]`` holds all rows sorted by feature f,
    computed once per forest (see :func:`_grow_tree`). Tree j of group g = j // group_size uses the half-sample
    of its group (n // 2 rows drawn with the group's seed) and a subsample of ``n_sub`` rows of that half (the
    tree's seed), split into a training half (splits) and an honest half (leaf means). Returns the block's flat
    node arrays, per-tree node offsets (len + 1) and per-tree importances."""
    p, n = XT.shape
    n_tr = n_sub // 2
    cap = 2 * (n_tr // max(min_leaf, 1)) + 3
    n_trees = tree_ids.shape[0]
    offsets = np.zeros(n_trees + 1, dtype=np.int64)
    total_cap = max(cap, n_trees * (cap // 2 + 1))
    o_feat = np.empty(total_cap, dtype=np.int32)
    o_thr = np.empty(total_cap)
    o_left = np.empty(total_cap, dtype=np.int32)
    o_stats = np.empty((total_cap, 4))
    imps = np.zeros((n_trees, p))
    feat = np.empty(cap, dtype=np.int32)
    thr = np.empty(cap)
    left = np.empty(cap, dtype=np.int32)
    stats = np.zeros((cap, 4))
    rows = np.empty(n, dtype=np.int64)
    state = np.zeros(1, dtype=np.uint64)
    role = np.zeros(n, dtype=np.int8)  # 1: splitting row of the current tree, 2: honest row, 0: unused
    n_lists = p if presorted else 1
    sorted_tr = np.empty((n_lists, n_tr), dtype=np.int64)
    sorted_va = np.empty((n_lists, n_sub - n_tr), dtype=np.int64)
    rho = np.zeros(n)
    goes_left = np.zeros(n, dtype=np.bool_)
    buf = np.empty(max(n_tr, n_sub - n_tr), dtype=np.int64)
    for j in range(n_trees):
        tid = tree_ids[j]
        half = tree_rows(n, group_seeds[tid // group_size], tree_seeds[tid], n_sub, rows, state)
        role[:] = 0
        for k in range(n_tr):
            role[half[k]] = 1
        for k in range(n_tr, n_sub):
            role[half[k]] = 2
        if presorted:
            for f in range(p):  # the tree's rows in the order of each feature, from the forest-wide order
                u = v = 0
                for k in range(n):
                    i = order[f, k]
                    if role[i] == 1:
                        sorted_tr[f, u] = i
                        u += 1
                    elif role[i] == 2:
                        sorted_va[f, v] = i
                        v += 1
        else:
            sorted_tr[0] = half[:n_tr]
            sorted_va[0] = half[n_tr:]
        k = _grow_tree(XT, t, y, sorted_tr, sorted_va, presorted, mtry, min_leaf, min_split, bal, eps_var,
                       max_imp_depth, state, feat, thr, left, stats, imps[j], rho, goes_left, buf)
        start = offsets[j]
        if start + k > o_feat.shape[0]:  # grow the block's arrays
            new = max(2 * o_feat.shape[0], start + k)
            o_feat2 = np.empty(new, dtype=np.int32)
            o_thr2 = np.empty(new)
            o_left2 = np.empty(new, dtype=np.int32)
            o_stats2 = np.empty((new, 4))
            o_feat2[:start] = o_feat[:start]
            o_thr2[:start] = o_thr[:start]
            o_left2[:start] = o_left[:start]
            o_stats2[:start] = o_stats[:start]
            o_feat, o_thr, o_left, o_stats = o_feat2, o_thr2, o_left2, o_stats2
        o_feat[start:start + k] = feat[:k]
        o_thr[start:start + k] = thr[:k]
        o_left[start:start + k] = left[:k]
        o_stats[start:start + k] = stats[:k]
        offsets[j + 1] = start + k
    end = offsets[n_trees]
    return (o_feat[:end].copy(), o_thr[:end].copy(), o_left[:end].copy(),
            o_stats[:end].copy(), offsets, imps)


@numba.njit(cache=True, nogil=True)
def predict_rows(X, lo, hi, feat, thr, left, stats, offsets, group_size, with_var, out_point, out_var):
    """Point estimates (and, with ``with_var``, econml's bootstrap-of-little-bags variances) for rows lo:hi.

    Point: the forest-weighted moments (each tree's leaf means, averaged over trees) give E[t], E[y], E[t^2],
    E[t y], and theta = (E[t y] - E[t] E[y]) / (E[t^2] - E[t]^2) solves the local moment. Variance: the
    per-tree moments M_b = J_b (theta, beta) - A_b, averaged within each group of ``group_size`` trees (which
    share a half-sample): between-group variance minus the within-group correction, through the inverse
    Jacobian, with econml's objective-Bayes debiasing of the difference. Rows go through one tree at a time
    (its nodes stay in cache), in chunks; sums run over trees in their order, so results do not depend on
    the chunking.
    """
    n_trees = offsets.shape[0] - 1
    n_groups = n_trees // group_size
    chunk = 256
    leaves = np.empty((chunk, n_trees), dtype=np.int64)
    acc = np.empty((chunk, 4))
    coef = np.empty((chunk, 4))  # theta, beta, u0, u1 (first row of the inverse Jacobian)
    grp = np.empty((chunk, 5))
    tot = np.empty((chunk, 8))
    for c0 in range(lo, hi, chunk):
        c1 = min(hi, c0 + chunk)
        nr = c1 - c0
        acc[:nr] = 0.0
        for b in range(n_trees):
            base = offsets[b]
            for r in range(nr):
                node = 0
                while left[base + node] >= 0:
                    if X[c0 + r, feat[base + node]] <= thr[base + node]:
                        node = left[base + node]
                    else:
                        node = left[base + node] + 1  # the right child always follows the left one
                leaf = base + node
                leaves[r, b] = leaf
                acc[r, 0] += stats[leaf, 0]
                acc[r, 1] += stats[leaf, 1]
                acc[r, 2] += stats[leaf, 2]
                acc[r, 3] += stats[leaf, 3]
        for r in range(nr):
            et, ey = acc[r, 0] / n_trees, acc[r, 1] / n_trees
            ett, ety = acc[r, 2] / n_trees, acc[r, 3] / n_trees
            det = ett - et * et
            if det > 1e-12 * max(ett, 1e-300):
                theta = (ety - et * ey) / det
                coef[r, 0], coef[r, 1], coef[r, 2], coef[r, 3] = theta, ey - theta * et, 1.0 / det, -et / det
            else:
                coef[r, 0], coef[r, 1], coef[r, 2], coef[r, 3] = 0.0, ey, 0.0, 0.0
            out_point[c0 + r - lo] = coef[r, 0]
        if not with_var:
            continue
        # tot: mean0, mean1, sq00, sq01, sq11, tot00, tot01, tot11 over groups
        tot[:nr] = 0.0
        for g in range(n_groups):
            grp[:nr] = 0.0
            for b in range(g * group_size, (g + 1) * group_size):
                for r in range(nr):
                    leaf = leaves[r, b]
                    theta, beta = coef[r, 0], coef[r, 1]
                    m0 = stats[leaf, 2] * theta + stats[leaf, 0] * beta - stats[leaf, 3]
                    m1 = stats[leaf, 0] * theta + beta - stats[leaf, 1]
                    grp[r, 0] += m0
                    grp[r, 1] += m1
                    grp[r, 2] += m0 * m0
                    grp[r, 3] += m0 * m1
                    grp[r, 4] += m1 * m1
            for r in range(nr):
                b0, b1 = grp[r, 0] / group_size, grp[r, 1] / group_size
                tot[r, 0] += b0
                tot[r, 1] += b1
                tot[r, 2] += b0 * b0
                tot[r, 3] += b0 * b1
                tot[r, 4] += b1 * b1
                tot[r, 5] += grp[r, 2] / group_size
                tot[r, 6] += grp[r, 3] / group_size
                tot[r, 7] += grp[r, 4] / group_size
        for r in range(nr):
            u0, u1 = coef[r, 2], coef[r, 3]
            mean0, mean1 = tot[r, 0] / n_groups, tot[r, 1] / n_groups
            sq00, sq01, sq11 = tot[r, 2] / n_groups, tot[r, 3] / n_groups, tot[r, 4] / n_groups
            vb00, vb01, vb11 = sq00 - mean0 * mean0, sq01 - mean0 * mean1, sq11 - mean1 * mean1
            pred_var = u0 * u0 * vb00 + 2.0 * u0 * u1 * vb01 + u1 * u1 * vb11
            c00 = (tot[r, 5] / n_groups - sq00) / (group_size - 1)
            c01 = (tot[r, 6] / n_groups - sq01) / (group_size - 1)
            c11 = (tot[r, 7] / n_groups - sq11) / (group_size - 1)
            corr = u0 * u0 * c00 + 2.0 * u0 * u1 * c01 + u1 * u1 * c11
            naive = pred_var - corr
            se = max(pred_var, corr) * math.sqrt(2.0 / n_groups)
            z = naive / max(se, 1e-10)
            num = math.exp(-z * z / 2.0) / math.sqrt(2.0 * math.pi)
            den = 0.5 * math.erfc(-z / math.sqrt(2.0))
            out_var[c0 + r - lo] = naive + se * num / den if den > 0 else max(naive, 0.0)
