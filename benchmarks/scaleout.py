"""Scale-out: tile (chunk by chunk into the Zarr store, written by the workers) and embed (spectral
statistics) a generated study of N locations x 4 scales on a Dask LocalCluster of 1 and of 2 worker
processes, in one process; print throughput, the 1 -> 2 speed-up and the peak memory (this process plus its
workers, sampled every 0.2 s). Set NUMBA_NUM_THREADS=1 to keep each worker on one core.

Then the cate stage of a study that has run (default: the default study's ``out/`` and ``params.yaml``,
after ``dvc repro``): synchronous (``cate.n_jobs`` fits side by side on threads), on 1 and on 2 workers;
wall times, speed-ups and whether the outputs are bitwise identical.

    python benchmarks/scaleout.py [--n 50000] [--size 8000] [--study-out out --params params.yaml]
    python benchmarks/scaleout.py --cate-only
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from pipeline.core.config import EmbedConfig, ScaleConfig, TileConfig
from pipeline.imagery.scenes import SceneCatalog
from pipeline.imagery.tiling import tile_to_store
from pipeline.procedures.embed import embed_study

SCALES = [ScaleConfig("s480m", 480.0, 8), ScaleConfig("s960m", 960.0, 16), ScaleConfig("s1920m", 1920.0, 16),
          ScaleConfig("s3840m", 3840.0, 16)]


class PeakRSS:
    """Peak resident memory of this process and all its children."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        me = psutil.Process()
        while not self._stop.is_set():
            total = me.memory_info().rss
            for c in me.children(recursive=True):
                try:
                    total += c.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(0.2)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def digest(folder: Path) -> dict[str, str]:
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def cate_scaleout(study_out: Path, params: Path) -> None:
    """The cate stage synchronously and on 1 and 2 LocalCluster workers; times and bitwise equality."""
    from distributed import Client, LocalCluster

    from pipeline.core.config import load_config
    from pipeline.core.layout import StudyLayout
    from pipeline.procedures.cate import run_cate

    layout = StudyLayout(study_out)
    if not layout.features.index.is_file():
        print(f"cate: no features at {layout.features.root}; run the study first (dvc repro), or pass --study-out")
        return
    cfg = load_config(params)
    n_sets = len(json.loads(layout.features.index.read_text())["sets"])
    times, digests = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("synchronous", 1, 2):
            out = Path(tmp) / f"cate-{mode}"
            if mode == "synchronous":
                t0 = time.perf_counter()
                run_cate(layout.units, layout.features.root, cfg.cate, cfg.seed, out, progress=False)
            else:
                with LocalCluster(n_workers=mode, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=50) as cluster, Client(cluster) as client:
                    t0 = time.perf_counter()
                    run_cate(layout.units, layout.features.root, cfg.cate, cfg.seed, out, progress=False,
                             client=client)
            times[mode] = time.perf_counter() - t0
            digests[mode] = digest(out)
            print(f"cate stage ({n_sets} scale sets), {mode if mode == 'synchronous' else f'{mode} worker(s)'}: "
                  f"{times[mode]:6.1f} s", flush=True)
    same = digests[1] == digests["synchronous"] == digests[2]
    print(f"cate speed-up: 1 -> 2 workers {times[1] / times[2]:.2f}x, synchronous -> 2 workers "
          f"{times['synchronous'] / times[2]:.2f}x; outputs bitwise identical: {same}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--size", type=int, default=8000, help="generated scene side in pixels (30 m)")
    ap.add_argument("--study-out", type=Path, default=Path("out"), help="a study's output folder (cate part)")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"), help="that study's params (cate part)")
    ap.add_argument("--cate-only", action="store_true", help="only the cate stage")
    args = ap.parse_args()
    if args.cate_only:
        cate_scaleout(args.study_out, args.params)
        return
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from distributed import Client, LocalCluster
    from pyproj import Transformer
    from tiling import generate_scene  # the tiling benchmark's scene generator

    with tempfile.TemporaryDirectory() as tmp:
        scene = Path(tmp) / "scene.tif"
        generate_scene(scene, args.size, 6)
        rng = np.random.default_rng(0)
        x0, y0 = 300000.0, 500000.0
        xs = x0 + rng.uniform(2000, args.size * 30 - 2000, args.n)
        ys = y0 - rng.uniform(2000, args.size * 30 - 2000, args.n)
        lon, lat = Transformer.from_crs(32636, 4326, always_xy=True).transform(xs, ys)
        cat = SceneCatalog.from_paths([scene])
        ids = [f"l{i}" for i in range(args.n)]
        results = {}
        for workers in (1, 2):
            with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                              silence_logs=50) as cluster, Client(cluster) as client, PeakRSS() as mem:
                t0 = time.perf_counter()
                store = Path(tmp) / f"tile{workers}"
                tile_to_store(cat, ids, lon, lat, TileConfig(scales=tuple(SCALES)), store, client=client)
                t_tile = time.perf_counter() - t0
                t0 = time.perf_counter()
                embed_study(store, EmbedConfig(encoders=("spectral",), batch_size=256, device="cpu"), 0,
                            Path(tmp) / f"embed{workers}", progress=False, client=client)
                t_embed = time.perf_counter() - t0
            results[workers] = (t_tile, t_embed, mem.peak)
            chips = args.n * len(SCALES)
            print(f"{workers} worker(s): tiling {chips / t_tile:8.0f} chips/s ({t_tile:6.1f} s), embedding "
                  f"{chips / t_embed:8.0f} chips/s ({t_embed:6.1f} s), peak RSS {mem.peak / 2 ** 30:.2f} GiB")
        a = np.load(Path(tmp) / "embed1" / "spectral" / "s960m.npy")
        b = np.load(Path(tmp) / "embed2" / "spectral" / "s960m.npy")
        print(f"speed-up 1 -> 2 workers: tiling {results[1][0] / results[2][0]:.2f}x, embedding "
              f"{results[1][1] / results[2][1]:.2f}x; embeddings identical: {np.array_equal(a, b)}")
    cate_scaleout(args.study_out, args.params)


if __name__ == "__main__":
    main()
