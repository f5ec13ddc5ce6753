"""Landsat scenes: discovery, metadata, footprints, band maps, reflectance scaling and QA masks.

A :class:`Scene` is the metadata of one raster product, read once: CRS, transform, size, band names, dtype,
nodata and the per-band scale/offset. A scene is either one (multi-band) file GeoTIFF/COG/VRT, or a
**band-per-file** product: Landsat Collection 2 files such as ``LC08_L2SP_..._SR_B4.TIF`` (Landsat 4-9) are
grouped by product id, mapped to common band names (blue, green, red, nir, swir1, swir2) and paired with
their ``QA_PIXEL`` file; any other single-band files on one grid can be stacked with
:meth:`SceneCatalog.from_band_files`.

Radiometry (:func:`radiometry_for`): ``auto`` applies the scale/offset stored in the file when it is not the
identity, the Collection 2 Level-2 surface-reflectance constants (DN x 2.75e-5 - 0.2) to recognised L2 SR
products, and nothing otherwise (already-scaled or 8-bit products); ``none`` never scales; ``l2`` always
applies the L2 constants; a number multiplies DNs by it (e.g. 1/255 for 8-bit composites). Nodata becomes
NaN; with a QA_PIXEL band, fill, dilated cloud, cirrus, cloud and cloud shadow pixels become NaN too.
"""

from __future__ import annotations

import functools
import glob
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Mapping, Sequence, Union

import geopandas as gpd
import numpy as np
import rasterio
from rasterio.errors import RasterioIOError
from rasterio.warp import transform as warp_transform
from rasterio.warp import transform_bounds
from rasterio.windows import Window
from shapely.geometry import box

from ..core.artifacts import missing_reason
from ..core.errors import ImageryError

L2_SCALE = 2.75e-5
L2_OFFSET = -0.2

# Landsat Collection 2 file names: LC08_L2SP_PPPRRR_YYYYMMDD_YYYYMMDD_CC_TX_<band>.TIF
LANDSAT_C2 = re.compile(
    r"^(?P<product>(?P<sensor>L[COTEM]0[4-9])_(?P<level>L2SP|L2SR|L1TP|L1GT|L1GS)_\d{6}_\d{8}_\d{8}_\d{2}_(?:T1|T2|RT))"
    r"_(?P<band>SR_B\d+|ST_B\d+|QA_PIXEL|QA_RADSAT|SR_QA_AEROSOL|B\d+)\.TIF$", re.IGNORECASE)

# Landsat band numbers of the common reflective bands, per sensor family.
LANDSAT_BANDS = {
    "oli": {"coastal": 1, "blue": 2, "green": 3, "red": 4, "nir": 5, "swir1": 6, "swir2": 7},  # Landsat 8/9
    "tm": {"blue": 1, "green": 2, "red": 3, "nir": 4, "swir1": 5, "swir2": 7},  # Landsat 4/5 TM, 7 ETM+
}
DEFAULT_BANDS = ("blue", "green", "red", "nir", "swir1", "swir2")

# QA_PIXEL bits (Collection 2): 0 fill, 1 dilated cloud, 2 cirrus, 3 cloud, 4 cloud shadow.
QA_FILL = 1 << 0
QA_CLOUDY = (1 << 1) | (1 << 2) | (1 << 3) | (1 << 4)

Radiometry = Union[str, float]


@dataclass(frozen=True)
class Scene:
    """Metadata of one raster product, read once.

    ``paths`` holds one file (all bands in it) or one file per band (band-per-file products);
    ``band_indexes`` are the 1-based band numbers read from each file; ``qa_path`` is an optional
    Landsat QA_PIXEL file on the same grid.
    """

    name: str
    paths: tuple[str, ...]
    band_indexes: tuple[int, ...]
    band_names: tuple[str, ...]
    crs: str
    transform: tuple[float, ...]
    width: int
    height: int
    dtype: str
    nodata: float | None
    scales: tuple[float, ...]
    offsets: tuple[float, ...]
    product: str | None = None  # e.g. "landsat-c2-l2"
    qa_path: str | None = None
    qa_band: int | None = None  # 1-based band of a QA_PIXEL layer inside the main file

    @property
    def count(self) -> int:
        return len(self.band_names)

    @property
    def res(self) -> float:
        return float(abs(self.transform[0]))

    @property
    def affine(self) -> rasterio.Affine:
        return rasterio.Affine(*self.transform[:6])

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        a = self.affine
        xs = [a.c, a.c + a.a * self.width]
        ys = [a.f, a.f + a.e * self.height]
        return min(xs), min(ys), max(xs), max(ys)

    @property
    def path(self) -> str:
        return self.paths[0]

    @property
    def is_geographic(self) -> bool:
        """True when the CRS is in degrees (e.g. EPSG:4326): windows in metres are converted per location."""
        return crs_units(self.crs)[0]

    def metres_per_unit(self, y) -> tuple[np.ndarray, np.ndarray]:
        """Metres per CRS unit along x and y at CRS y-coordinates ``y``: the linear unit of a projected CRS
        (1 for metres, 0.3048 for feet), or the WGS84 length of a degree of longitude and latitude at those
        latitudes for a geographic CRS."""
        y = np.asarray(y, dtype=np.float64)
        geographic, factor = crs_units(self.crs)
        if not geographic:
            return np.full(y.shape, factor), np.full(y.shape, factor)
        return degree_lengths(y)

    @property
    def res_m(self) -> float:
        """Pixel size in metres (the smaller side, at the scene's centre for a geographic CRS)."""
        b = self.bounds
        mx, my = self.metres_per_unit(np.array([(b[1] + b[3]) / 2]))
        return float(min(abs(self.transform[0]) * mx[0], abs(self.transform[4]) * my[0]))

    def select_bands(self, names: Sequence[str]) -> "Scene":
        """The same scene restricted to ``names`` (in that order).

        Raises:
            ImageryError: naming the scene, the missing band and the available ones.
        """
        missing = [b for b in names if b not in self.band_names]
        if missing:
            raise ImageryError(f"{self.name}: bands", f"bands among {list(self.band_names)}",
                               f"unknown {missing}", "fix tile.bands or the band descriptions of the file")
        idx = [self.band_names.index(b) for b in names]
        paths = self.paths if len(self.paths) == 1 else tuple(self.paths[i] for i in idx)
        return replace(self, paths=paths, band_indexes=tuple(self.band_indexes[i] for i in idx),
                       band_names=tuple(names), scales=tuple(self.scales[i] for i in idx),
                       offsets=tuple(self.offsets[i] for i in idx))


@functools.lru_cache(maxsize=64)
def crs_units(crs: str) -> tuple[bool, float]:
    """(is geographic, metres per unit of a projected CRS) of a CRS string."""
    from pyproj import CRS

    c = CRS.from_user_input(crs)
    if c.is_geographic:
        return True, float("nan")
    axes = c.axis_info
    return False, float(axes[0].unit_conversion_factor) if axes else 1.0


def degree_lengths(lat) -> tuple[np.ndarray, np.ndarray]:
    """Metres per degree of longitude and of latitude at latitudes ``lat`` (degrees) on the WGS84 ellipsoid
    (series expansion, accurate to centimetres)."""
    phi = np.radians(np.asarray(lat, dtype=np.float64))
    per_lon = 111412.84 * np.cos(phi) - 93.5 * np.cos(3 * phi) + 0.118 * np.cos(5 * phi)
    per_lat = 111132.92 - 559.82 * np.cos(2 * phi) + 1.175 * np.cos(4 * phi) - 0.0023 * np.cos(6 * phi)
    return np.maximum(per_lon, 1e-6), per_lat


def _open_meta(path: str):
    if not Path(path).is_file():
        raise ImageryError(path, "an existing raster file", missing_reason(path), "check the scene path or glob")
    try:
        ds = rasterio.open(path)
    except RasterioIOError as exc:
        raise ImageryError(path, "a raster readable by rasterio (GeoTIFF/COG/VRT)", f"an unreadable file ({exc})",
                           "re-download or re-export the file") from None
    with ds:
        if ds.crs is None:
            raise ImageryError(path, "a raster with a coordinate reference system", "no CRS",
                               "assign one, e.g. `gdal_edit.py -a_srs EPSG:32636 FILE`")
        a = ds.transform
        if a.b != 0 or a.d != 0:
            raise ImageryError(path, "a north-up raster", "a rotated geotransform", "warp it north-up first")
        try:  # read one pixel of every band to catch truncated / corrupt files early
            ds.read(window=Window(0, 0, 1, 1))
        except RasterioIOError as exc:
            raise ImageryError(path, "a readable raster", f"a corrupt file ({exc})", "re-download the file") from None
        return {"crs": ds.crs.to_string(), "transform": tuple(a)[:6], "width": ds.width, "height": ds.height,
                "count": ds.count, "dtype": ds.dtypes[0], "nodata": ds.nodata,
                "descriptions": tuple(ds.descriptions), "scales": tuple(float(s) for s in ds.scales),
                "offsets": tuple(float(o) for o in ds.offsets)}


def open_scene(path: str | os.PathLike) -> Scene:
    """Read the metadata of a single-file scene (all bands in one GeoTIFF/COG/VRT).

    Band names come from the band descriptions (``band1``... when empty; a band described ``QA_PIXEL``
    becomes the QA layer).

    Raises:
        ImageryError: missing, unreadable or corrupt file; no CRS; rotated raster.
    """
    path = str(path)
    m = _open_meta(path)
    names, idx, scales, offsets, qa_band = [], [], [], [], None
    for i, d in enumerate(m["descriptions"]):
        label = d or f"band{i + 1}"
        if label.upper() == "QA_PIXEL":
            qa_band = i + 1
            continue
        names.append(label)
        idx.append(i + 1)
        scales.append(m["scales"][i])
        offsets.append(m["offsets"][i])
    return Scene(name=Path(path).name, paths=(path,), band_indexes=tuple(idx), band_names=tuple(names),
                 crs=m["crs"], transform=m["transform"], width=m["width"], height=m["height"], dtype=m["dtype"],
                 nodata=m["nodata"], scales=tuple(scales), offsets=tuple(offsets), qa_band=qa_band)


def _stack(name: str, band_files: Mapping[str, str], qa_path: str | None, product: str | None) -> Scene:
    metas = {b: _open_meta(p) for b, p in band_files.items()}
    first_band, first = next(iter(metas.items()))
    for b, m in metas.items():
        for key in ("crs", "transform", "width", "height"):
            if m[key] != first[key]:
                raise ImageryError(band_files[b], f"the same grid as {Path(band_files[first_band]).name} ({key})",
                                   f"{m[key]!r}", "resample the bands onto one grid first")
        if m["count"] != 1:
            raise ImageryError(band_files[b], "a single-band file", f"{m['count']} bands",
                               "give one file per band, or open the file as a multiband scene")
    if qa_path is not None:
        qm = _open_meta(qa_path)
        if (qm["transform"], qm["width"], qm["height"]) != (first["transform"], first["width"], first["height"]):
            raise ImageryError(qa_path, "the grid of the reflectance bands", "another grid", "use the matching QA file")
    nodatas = {m["nodata"] for m in metas.values()}
    return Scene(name=name, paths=tuple(band_files.values()), band_indexes=(1,) * len(band_files),
                 band_names=tuple(band_files), crs=first["crs"], transform=first["transform"],
                 width=first["width"], height=first["height"], dtype=first["dtype"],
                 nodata=first["nodata"] if len(nodatas) == 1 else None,
                 scales=tuple(m["scales"][0] for m in metas.values()),
                 offsets=tuple(m["offsets"][0] for m in metas.values()), product=product, qa_path=qa_path)


def parse_landsat_name(path: str | os.PathLike) -> dict | None:
    """Fields of a Landsat Collection 2 band file name, or None when the name does not match."""
    m = LANDSAT_C2.match(Path(path).name)
    if not m:
        return None
    d = m.groupdict()
    d["family"] = "oli" if d["sensor"][-1] in "89" else "tm"
    return d


def group_landsat_products(paths: Iterable[str]) -> tuple[list[Scene], list[str]]:
    """Group Collection 2 band files into band-per-file scenes; return (scenes, paths not recognised)."""
    products: dict[str, dict[str, str]] = {}
    info: dict[str, dict] = {}
    other = []
    for p in paths:
        d = parse_landsat_name(p)
        if d is None:
            other.append(p)
            continue
        products.setdefault(d["product"], {})[d["band"].upper()] = p
        info[d["product"]] = d
    scenes = []
    for product, files in sorted(products.items()):
        d = info[product]
        prefix = "SR_B" if d["level"].startswith("L2") else "B"
        band_files = {}
        for name, number in LANDSAT_BANDS[d["family"]].items():
            key = f"{prefix}{number}"
            if key in files and name in DEFAULT_BANDS:
                band_files[name] = files[key]
        if not band_files:
            raise ImageryError(product, "reflectance band files (SR_B* or B*)", f"only {sorted(files)}",
                               "add the band files of this product")
        level = "landsat-c2-l2" if d["level"].startswith("L2") else "landsat-c2-l1"
        scenes.append(_stack(product, band_files, files.get("QA_PIXEL"), level))
    return scenes, other


def _literal_prefix(path: Path) -> tuple[Path, str]:
    """Split ``path`` into its longest existing folder (taken literally, whatever characters it holds) and the
    rest (the glob pattern)."""
    parts = path.parts
    for i in range(len(parts) - 1, 0, -1):
        head = Path(*parts[:i])
        if head.is_dir():
            return head, str(Path(*parts[i:]))
    return Path("."), str(path)


def _band_labels(paths: Sequence[str], descriptions: Sequence[str]) -> list[str]:
    """Band names of single-band files stacked into one scene: their band descriptions when all are set and
    distinct, else the part of the file names that differs (``lsat7_2000_10.tif`` ... -> ``10``, ...)."""
    if all(descriptions) and len(set(descriptions)) == len(descriptions):
        return list(descriptions)
    stems = [Path(p).stem for p in paths]
    prefix = os.path.commonprefix(stems)
    prefix = prefix[: max((prefix.rfind(c) for c in "_-. "), default=-1) + 1]  # up to a separator
    suffix = os.path.commonprefix([st[::-1] for st in stems])[::-1]
    cuts = [i for i in (suffix.find(c) for c in "_-. ") if i >= 0]
    suffix = suffix[min(cuts):] if cuts else ""
    labels = [st[len(prefix): len(st) - len(suffix)] if len(st) > len(prefix) + len(suffix) else st for st in stems]
    return labels if all(labels) and len(set(labels)) == len(labels) else stems


def stack_band_files(paths: Sequence[str]) -> tuple[list[Scene], list[str], list[str]]:
    """Stack single-band files that share one grid (CRS, transform, size) into one band-per-file scene each.

    A folder of per-band files (``lsat7_2000_10.tif``, ``..._20.tif``, ...) matched by one glob is one scene
    with several bands, not several one-band scenes. Returns (stacked scenes, the other paths, notes saying
    what was stacked, with which band names).
    """
    metas = {p: _open_meta(p) for p in paths}
    groups: dict[tuple, list[str]] = {}
    for p, m in metas.items():
        if m["count"] == 1:
            groups.setdefault((m["crs"], m["transform"], m["width"], m["height"]), []).append(p)
    stacked, notes, used = [], [], set()
    for files in groups.values():
        if len(files) < 2:
            continue
        files = sorted(files)
        labels = _band_labels(files, [metas[p]["descriptions"][0] or "" for p in files])
        qa = [p for p, lab in zip(files, labels) if lab.upper().endswith("QA_PIXEL")]
        band_files = {lab: p for p, lab in zip(files, labels) if p not in qa}
        name = os.path.commonprefix([Path(p).stem for p in files]).rstrip("_-. ") or Path(files[0]).stem
        stacked.append(_stack(name, band_files, qa[0] if qa else None, None))
        used.update(files)
        notes.append(f"{len(band_files)} single-band files on one grid ({Path(files[0]).parent}/"
                     f"{Path(files[0]).name}, ...) stacked into one scene {name!r} with bands {list(band_files)}; "
                     "tile.bands selects and orders them by these names")
    return stacked, [p for p in paths if p not in used], notes


def resolve_scene_paths(patterns: Iterable[str | os.PathLike], base: str | os.PathLike = ".") -> list[str]:
    """Expand files and globs (relative to ``base``) into a sorted list of paths.

    Only the pattern part of a path is a glob: ``base`` and the existing folders a pattern starts with are
    literal (a data folder named ``study [v1]`` is a folder, not a character class), and a name that exists
    as a file is that file.

    Raises:
        ImageryError: naming the pattern when nothing matches (or the file is a broken link).
    """
    out: list[str] = []
    for pat in patterns:
        pat = str(pat)
        p = Path(base) / pat if not os.path.isabs(pat) else Path(pat)
        if os.path.lexists(p) and not p.is_dir():
            hits = [str(p)]  # a file named literally (even with glob characters, or a broken link: opened later)
        else:
            head, rest = _literal_prefix(p)
            hits = sorted(glob.glob(os.path.join(glob.escape(str(head)), rest)))
        if not hits:
            raise ImageryError(str(p), "at least one matching raster", missing_reason(p) if not glob.has_magic(pat)
                               else "no file matching the pattern", "check the scene path/glob")
        out.extend(hits)
    return sorted(dict.fromkeys(out))


class SceneCatalog:
    """A set of scenes with a footprint index (EPSG:4326) for finding the scenes that cover a point."""

    def __init__(self, scenes: Sequence[Scene]):
        self.scenes = list(scenes)
        if not self.scenes:
            raise ImageryError("scenes", "at least one scene", "none", "give scene paths or a glob")
        counts = {s.count for s in self.scenes}
        if len(counts) > 1:
            detail = ", ".join(f"{s.name}: {s.count}" for s in self.scenes[:6])
            raise ImageryError("scenes", "the same bands in every scene", f"band counts {detail}",
                               "give scenes with the same bands, or pick the same band names in each with "
                               "tile.bands (single-band files on one grid are stacked into one scene; files on "
                               "different grids are different scenes)")
        self._footprints = None
        self.notes: list[str] = []

    @classmethod
    def from_paths(cls, paths: Iterable[str | os.PathLike], bands: Sequence[str] | None = None,
                   nodata: float | None = None) -> "SceneCatalog":
        """Scenes from files: Landsat C2 band files are grouped into products; single-band files that share
        one grid are stacked into one band-per-file scene (:func:`stack_band_files`, which says so in
        :attr:`notes`); other files are scenes. ``nodata`` overrides the files' nodata value (e.g. 0 for a
        0-DN fill the files do not declare)."""
        landsat, other = group_landsat_products([str(p) for p in paths])
        stacked, other, notes = stack_band_files(other)
        scenes = landsat + stacked + [open_scene(p) for p in other]
        if nodata is not None:
            scenes = [replace(s, nodata=float(nodata)) for s in scenes]
        if bands:
            scenes = [s.select_bands(bands) for s in scenes]
        catalog = cls(scenes)
        catalog.notes = notes
        return catalog

    @classmethod
    def from_band_files(cls, band_files: Mapping[str, str | os.PathLike], name: str | None = None,
                        qa_path: str | os.PathLike | None = None) -> "SceneCatalog":
        """One scene stacked from single-band files on one grid, e.g. ``{"blue": ".../b1.tif", ...}``."""
        files = {b: str(p) for b, p in band_files.items()}
        scene = _stack(name or Path(next(iter(files.values()))).stem, files,
                       None if qa_path is None else str(qa_path), None)
        return cls([scene])

    def footprints(self) -> gpd.GeoDataFrame:
        """One row per scene with its footprint polygon in EPSG:4326 (computed once)."""
        if self._footprints is None:
            geoms = [box(*transform_bounds(s.crs, "EPSG:4326", *s.bounds)) for s in self.scenes]
            self._footprints = gpd.GeoDataFrame(
                {"scene": [s.name for s in self.scenes], "path": [s.path for s in self.scenes],
                 "crs": [s.crs for s in self.scenes], "bands": [",".join(s.band_names) for s in self.scenes],
                 "res": [s.res for s in self.scenes]}, geometry=geoms, crs=4326)
        return self._footprints

    def candidates(self, lon: np.ndarray, lat: np.ndarray, margin_m: float = 0.0) -> list[np.ndarray]:
        """For each scene, the indices of the points inside its footprint grown by ``margin_m`` metres (a cheap
        pre-filter: a point just outside a scene still has part of its window inside)."""
        if margin_m > 0:
            geoms = []
            for sc in self.scenes:
                b = sc.bounds
                mx, my = sc.metres_per_unit(np.array([b[1], b[3]]))
                dx, dy = margin_m / float(mx.min()), margin_m / float(my.min())
                geoms.append(box(*transform_bounds(sc.crs, "EPSG:4326", b[0] - dx, b[1] - dy, b[2] + dx, b[3] + dy)))
            fp_geom = gpd.GeoSeries(geoms, crs=4326)
        else:
            fp_geom = self.footprints().geometry
        pts = gpd.GeoSeries(gpd.points_from_xy(lon, lat), crs=4326)
        scene_idx, point_idx = pts.sindex.query(fp_geom, predicate="intersects")
        return [np.sort(point_idx[scene_idx == s]) for s in range(len(self.scenes))]

    @staticmethod
    def project(scene: Scene, lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Reproject lon/lat points into the scene's CRS."""
        if len(lon) == 0:
            return np.empty(0), np.empty(0)
        x, y = warp_transform("EPSG:4326", scene.crs, list(map(float, lon)), list(map(float, lat)))
        return np.asarray(x), np.asarray(y)


def radiometry_for(scene: Scene, mode: Radiometry = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Per-band (scale, offset) that turn DNs into the values chips store."""
    n = scene.count
    if isinstance(mode, (int, float)) and not isinstance(mode, bool):
        return np.full(n, float(mode)), np.zeros(n)
    if mode == "none":
        return np.ones(n), np.zeros(n)
    if mode == "l2" or (mode == "auto" and scene.product == "landsat-c2-l2"):
        return np.full(n, L2_SCALE), np.full(n, L2_OFFSET)
    if mode == "auto":
        return np.asarray(scene.scales, float), np.asarray(scene.offsets, float)
    raise ImageryError("tile.radiometry", "'auto', 'none', 'l2' or a number", repr(mode), "pick one")


def qa_masks(qa: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fill, cloudy) boolean masks from Landsat Collection 2 QA_PIXEL values."""
    qa = qa.astype(np.uint16)
    return (qa & QA_FILL) > 0, (qa & QA_CLOUDY) > 0


class SceneReader:
    """Open handles on one scene's files; reads windows as float32 values with NaN where invalid."""

    def __init__(self, scene: Scene, radiometry: Radiometry = "auto"):
        self.scene = scene
        self.scale, self.offset = radiometry_for(scene, radiometry)
        self._ds = [rasterio.open(p) for p in dict.fromkeys(scene.paths)]
        self._by_path = {p: ds for p, ds in zip(dict.fromkeys(scene.paths), self._ds)}
        self._qa = rasterio.open(scene.qa_path) if scene.qa_path else None

    def close(self) -> None:
        for ds in self._ds:
            ds.close()
        if self._qa is not None:
            self._qa.close()

    def __enter__(self) -> "SceneReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def read(self, row0: int, col0: int, nrows: int, ncols: int) -> tuple[np.ndarray, np.ndarray]:
        """Read the in-raster window; return (values (bands, r, c) float32 with NaN, cloudy mask (r, c))."""
        values, cloudy, _ = self.read_masks(row0, col0, nrows, ncols)
        return values, cloudy

    def read_masks(self, row0: int, col0: int, nrows: int, ncols: int) -> tuple[np.ndarray, ...]:
        """Like :meth:`read`, plus the mask of pixels counted valid whose DN is exactly 0 in every band (a 0-DN
        fill of a file without a nodata value looks like this)."""
        s = self.scene
        win = Window(col0, row0, ncols, nrows)
        if len(self._ds) == 1:
            dn = self._ds[0].read(list(s.band_indexes), window=win)
        else:
            dn = np.stack([self._by_path[p].read(b, window=win) for p, b in zip(s.paths, s.band_indexes)])
        out = dn.astype(np.float32)
        invalid = np.zeros(dn.shape[1:], dtype=bool)
        if s.nodata is not None:
            invalid |= np.isnan(dn).any(axis=0) if np.isnan(s.nodata) else (dn == s.nodata).any(axis=0)
        cloudy = np.zeros_like(invalid)
        qa = None
        if self._qa is not None:
            qa = self._qa.read(1, window=win)
        elif s.qa_band is not None:
            qa = self._ds[0].read(s.qa_band, window=win)
        if qa is not None:
            fill, cloudy = qa_masks(qa)
            invalid |= fill
            cloudy &= ~fill
        out = out * self.scale[:, None, None].astype(np.float32) + self.offset[:, None, None].astype(np.float32)
        out[:, invalid | cloudy] = np.nan
        zero = (dn == 0).all(axis=0) & ~invalid & ~cloudy
        return out, cloudy, zero
