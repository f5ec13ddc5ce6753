r"""Exact area-weighted resampling of many windows from one block, via integral images.

For a piecewise-constant image f (one value per pixel), the integral :math:`F(r, c) = \int_0^r\int_0^c f`
is bilinear inside every pixel, so it equals the bilinear interpolation of the summed-area table
:math:`S[i, j] = \sum_{i' < i, j' < j} f[i', j']` at (r, c). The integral of f over any axis-aligned
rectangle with fractional corners is then :math:`F(r_1, c_1) - F(r_0, c_1) - F(r_1, c_0) + F(r_0, c_0)`:
an output pixel of an area-average resampling costs a few lookups, whatever the size ratio. The same
tables of the valid mask and of the cloud mask give each output pixel's valid area and each window's valid
and cloudy fractions. Compiled with numba when available (chips in parallel), NumPy otherwise.
"""

from __future__ import annotations

import numpy as np

try:  # pragma: no cover
    import numba

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover
    numba = None
    HAVE_NUMBA = False


def summed_area(a: np.ndarray) -> np.ndarray:
    """Summed-area table with a zero first row/column over the last two axes (float64)."""
    out = np.zeros(a.shape[:-2] + (a.shape[-2] + 1, a.shape[-1] + 1), dtype=np.float64)
    inner = out[..., 1:, 1:]
    np.cumsum(a, axis=-2, dtype=np.float64, out=inner)
    np.cumsum(inner, axis=-1, out=inner)
    return out


def _area_numpy(S, Sv, Sc, er, ec, min_valid):
    h1, w1 = Sv.shape
    ir = np.minimum(np.floor(er).astype(np.int64), h1 - 2)
    ic = np.minimum(np.floor(ec).astype(np.int64), w1 - 2)
    fr = (er - ir)[:, :, None]
    fc = (ec - ic)[:, None, :]
    r0, c0 = ir[:, :, None], ic[:, None, :]

    def interp(T):  # T (..., H+1, W+1) -> (B, ..., P+1, P+1)
        t00 = T[..., r0, c0]
        t01 = T[..., r0, c0 + 1]
        t10 = T[..., r0 + 1, c0]
        t11 = T[..., r0 + 1, c0 + 1]
        return (1 - fr) * (1 - fc) * t00 + (1 - fr) * fc * t01 + fr * (1 - fc) * t10 + fr * fc * t11

    def boxes(F):
        return F[..., 1:, 1:] - F[..., :-1, 1:] - F[..., 1:, :-1] + F[..., :-1, :-1]

    Fv = interp(Sv)  # (B, P+1, P+1)
    Fc = interp(Sc)
    F = np.moveaxis(interp(S), 0, 1)  # (B, C, P+1, P+1)
    den = boxes(Fv)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = boxes(F) / den[:, None]
    out[np.broadcast_to((den < min_valid[:, None, None])[:, None], out.shape)] = np.nan
    cloud = Fc[:, -1, -1] - Fc[:, 0, -1] - Fc[:, -1, 0] + Fc[:, 0, 0]
    return out.astype(np.float32), den, cloud


if HAVE_NUMBA:

    @numba.njit(cache=True, parallel=True)
    def _area_numba(S, Sv, Sc, er, ec, min_valid):  # pragma: no cover - compiled
        B, P1 = er.shape
        P = P1 - 1
        C = S.shape[0]
        hmax = Sv.shape[0] - 2
        wmax = Sv.shape[1] - 2
        out = np.empty((B, C, P, P), dtype=np.float32)
        den = np.empty((B, P, P))
        cloud = np.empty(B)
        for b in numba.prange(B):
            F = np.empty((C, P1, P1))
            Fv = np.empty((P1, P1))
            Fc = np.empty((P1, P1))
            for i in range(P1):
                r = er[b, i]
                ir = min(int(np.floor(r)), hmax)
                fr = r - ir
                for j in range(P1):
                    c = ec[b, j]
                    ic = min(int(np.floor(c)), wmax)
                    fc = c - ic
                    w00 = (1 - fr) * (1 - fc)
                    w01 = (1 - fr) * fc
                    w10 = fr * (1 - fc)
                    w11 = fr * fc
                    Fv[i, j] = w00 * Sv[ir, ic] + w01 * Sv[ir, ic + 1] + w10 * Sv[ir + 1, ic] + w11 * Sv[ir + 1, ic + 1]
                    Fc[i, j] = w00 * Sc[ir, ic] + w01 * Sc[ir, ic + 1] + w10 * Sc[ir + 1, ic] + w11 * Sc[ir + 1, ic + 1]
                    for k in range(C):
                        F[k, i, j] = (w00 * S[k, ir, ic] + w01 * S[k, ir, ic + 1] + w10 * S[k, ir + 1, ic]
                                      + w11 * S[k, ir + 1, ic + 1])
            for i in range(P):
                for j in range(P):
                    a = Fv[i + 1, j + 1] - Fv[i, j + 1] - Fv[i + 1, j] + Fv[i, j]
                    den[b, i, j] = a
                    for k in range(C):
                        if a < min_valid[b]:
                            out[b, k, i, j] = np.nan
                        else:
                            v = F[k, i + 1, j + 1] - F[k, i, j + 1] - F[k, i + 1, j] + F[k, i, j]
                            out[b, k, i, j] = v / a
            cloud[b] = Fc[P, P] - Fc[0, P] - Fc[P, 0] + Fc[0, 0]
        return out, den, cloud


def area_resample(S: np.ndarray, Sv: np.ndarray, Sc: np.ndarray, row_edges: np.ndarray, col_edges: np.ndarray,
                  min_valid, compiled: bool = True):
    """Resample windows by exact area averaging.

    Args:
        S: (C, H+1, W+1) summed-area table of the block's values with invalid pixels set to 0.
        Sv, Sc: (H+1, W+1) summed-area tables of the valid mask and of the cloud mask.
        row_edges, col_edges: (B, P+1) output pixel edges of each window, in block pixel coordinates,
            within [0, H] and [0, W].
        min_valid: an output pixel with less valid area than this (in source pixels) is NaN; one number, or
            one per window (B,) when windows differ in pixel area (scenes in a geographic CRS).

    Returns:
        chips (B, C, P, P) float32, valid area per output pixel (B, P, P), cloudy area per window (B,).
    """
    args = (np.ascontiguousarray(S, dtype=np.float64), np.ascontiguousarray(Sv, dtype=np.float64),
            np.ascontiguousarray(Sc, dtype=np.float64), np.ascontiguousarray(row_edges, dtype=np.float64),
            np.ascontiguousarray(col_edges, dtype=np.float64),
            np.ascontiguousarray(np.broadcast_to(np.asarray(min_valid, dtype=np.float64), (len(row_edges),))))
    if compiled and HAVE_NUMBA:
        return _area_numba(*args)
    return _area_numpy(*args)
