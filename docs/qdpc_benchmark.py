"""qDPC figures for docs/BENCHMARKS.md: reconstruction accuracy on simulated phase objects, and speed.

Run from the repository root: ``.venv/bin/python docs/qdpc_benchmark.py [--cells N]``. Accuracy uses the objects and
simulations of tests/test_qdpc.py; speed is the transfer functions (once per image shape and optics, then cached),
one reconstruction, and a BSCCM-layout ingest of N 128×128 cells with and without ``--derive qdpc-phase``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def main() -> None:
    import test_qdpc as t
    from conftest import build_bsccm

    from phenotyping.ingest import QdpcDerivation, ingest_set, qdpc
    from phenotyping.schemas import Sample, Specimen
    from phenotyping.store import Store

    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", type=int, default=200)
    n = ap.parse_args().cells
    phi = t._bumps()
    images = qdpc.forward_images(phi, t.SETUP, background=1000.0)
    for reg in (1e-4, 1e-3, 1e-2):
        clean = t._score(qdpc.reconstruct(images, t.SETUP, reg_phase=reg).phase, phi)
        noisy = [t._score(qdpc.reconstruct(images + np.random.default_rng(s).normal(0, 10.0, images.shape), t.SETUP,
                                           reg_phase=reg).phase, phi) for s in range(3)]
        print(f"reg_phase {reg:g}: noiseless r {clean[0]:.3f} MAE {clean[1]:.3f} rad; SNR 100 (3 seeds) r "
              f"{min(r for r, _ in noisy):.3f}-{max(r for r, _ in noisy):.3f} MAE "
              f"{min(m for _, m in noisy):.3f}-{max(m for _, m in noisy):.3f} rad")
    abbe = t._score(qdpc.reconstruct(t._abbe(phi, t.SETUP), t.SETUP).phase, phi)
    print(f"Abbe simulation of exp(i phi): r {abbe[0]:.3f} MAE {abbe[1]:.3f} rad")

    start = time.perf_counter()
    qdpc.transfer_functions(t.SETUP, (128, 128))
    print(f"transfer functions 128x128: {time.perf_counter() - start:.2f} s (once per shape and optics)")
    raw = qdpc.forward_images(t._bumps(128), t.SETUP, background=1000.0)
    start = time.perf_counter()
    for _ in range(50):
        qdpc.reconstruct(raw, t.SETUP)
    print(f"reconstruct 128x128: {(time.perf_counter() - start) / 50 * 1e3:.1f} ms per cell")

    leds = t._led_stack(t._bumps(128))
    with tempfile.TemporaryDirectory() as tmp:
        root = build_bsccm(Path(tmp) / "bsccm", n, markers=False, led_arrays={i: leds + i for i in range(n)})
        for label, derive in (("raw", None), ("--derive qdpc-phase", QdpcDerivation(t.SETUP, raw="keep"))):
            with Store(":memory:", image_dir=Path(tmp) / label.replace(" ", "_")) as store:
                store.create_sample(Sample(id="B", specimen=Specimen.blood), actor="bench")
                start = time.perf_counter()
                r = ingest_set(store, root, "B", actor="bench", derive=derive)
                wall = time.perf_counter() - start
            print(f"ingest {r.ingested} BSCCM cells 128x128, {label}: {wall:.1f} s ({r.ingested / wall:.0f} cells/s)")


if __name__ == "__main__":
    main()
