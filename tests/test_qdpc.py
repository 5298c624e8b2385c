"""Quantitative DPC (phenotyping.ingest.qdpc) and its ingest derivation.

Phase objects are three smooth Gaussian bumps (0.3-0.6 rad) on a 64×64 grid imaged at 0.53 µm through an NA 0.4 dry
objective with matched NA 0.4 half-disc illumination, 6.5 µm camera pixels at 20× (0.325 µm at the sample).
Measured on this setup (REG_PHASE = 1e-3; tests assert the bounds in brackets; `docs/qdpc_benchmark.py` prints them):
- linear weak-object model, noiseless: Pearson r 0.999, mean absolute error 0.010 rad (r >= 0.95, MAE < 0.02);
- same with Gaussian noise of 1 % of the background on every raw image (SNR 100), seeds 0-2: r 0.932-0.938,
  MAE 0.031-0.033 rad (r >= 0.9, MAE < 0.05);
- an independent partially coherent (Abbe) simulation of the non-linear object exp(i·phi): r 0.994, MAE 0.014 rad
  (r >= 0.95, MAE < 0.02), which checks the transfer functions' sign and scale, not only self-consistency; with
  BSCCM-like half-annuli (NA 0.5 objective, illumination NA 0.4-0.5) r 0.9999, MAE 0.002 rad;
- with absorption 0.1 × bumps added (Abbe): phase r 0.995; absorption r 0.999, MAE 0.0003 (r >= 0.95, MAE < 0.005).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import BSCCM_LED, build_bsccm, encode

from phenotyping.errors import IngestError
from phenotyping.ingest import (
    OpticalSetup,
    QdpcDerivation,
    ingest_set,
    qdpc,
    read_image,
)
from phenotyping.schemas import Sample, Specimen

SETUP = OpticalSetup(wavelength_um=0.53, na_objective=0.4, na_illumination=0.4, pixel_size_um=6.5, magnification=20)
DPC4 = list(qdpc.HALF_PUPIL_CHANNELS)
SNR = 100  # background / noise standard deviation, per raw image


def _bumps(n: int = 64, shift: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Three smooth Gaussian bumps (radians) on an empty background, ``(n, n)``."""
    yy, xx = np.mgrid[:n, :n].astype(float)
    phi = np.zeros((n, n))
    for cy, cx, sigma, peak in ((30, 28, 6, 0.6), (20, 42, 4, 0.3), (44, 38, 5, 0.4)):
        cy, cx = cy * n / 64 + shift[0], cx * n / 64 + shift[1]
        phi += peak * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (sigma * n / 64) ** 2))
    return phi


def _score(rec: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    return float(np.corrcoef(rec.ravel(), truth.ravel())[0, 1]), float(np.abs(rec - truth).mean())


def _abbe(phi: np.ndarray, setup: OpticalSetup, mu: np.ndarray | None = None, rings: int = 16) -> np.ndarray:
    """The four half-pupil images of ``exp(-mu + i·phi)`` by Abbe's method: one coherent image per source point
    (a polar grid over each half-disc, independent of the module's quadrature), intensities summed. Background 1."""
    t = np.exp(1j * phi - (0.0 if mu is None else mu))
    spectrum = np.fft.fft2(t)
    fx, fy = np.meshgrid(np.fft.fftfreq(phi.shape[1], setup.sample_pixel_um),
                         np.fft.fftfreq(phi.shape[0], setup.sample_pixel_um))
    radius = setup.na_illumination / setup.wavelength_um
    cutoff = setup.na_objective / setup.wavelength_um
    inner = setup.na_illumination_inner / setup.wavelength_um
    r = inner + (np.arange(rings) + 0.5) / rings * (radius - inner)
    points = [(ri * np.cos(a), ri * np.sin(a)) for i, ri in enumerate(r)
              for a in (np.arange(8 * (i + 1)) + 0.5) * 2 * np.pi / (8 * (i + 1))]
    weights = [ri / (8 * (i + 1)) for i, ri in enumerate(r) for _ in range(8 * (i + 1))]   # each polar cell's area
    halves = [lambda sx, sy: sx < 0, lambda sx, sy: sx > 0, lambda sx, sy: sy < 0, lambda sx, sy: sy > 0]
    out = []
    for inside in halves:
        img, total = np.zeros(phi.shape), 0.0
        for (sx, sy), w in zip(points, weights):
            if inside(sx, sy):
                pupil = (fx + sx) ** 2 + (fy + sy) ** 2 <= cutoff ** 2                 # P(u + s)
                img += w * np.abs(np.fft.ifft2(spectrum * pupil)) ** 2
                total += w
        out.append(img / total)
    return np.stack(out)


# ---------------------------------------------------------------- accuracy
def test_noiseless_reconstruction_through_the_linear_model():
    phi = _bumps()
    rec = qdpc.reconstruct(qdpc.forward_images(phi, SETUP, background=1000.0), SETUP).phase
    r, mae = _score(rec, phi)
    assert r >= 0.95 and mae < 0.02, (r, mae)
    assert rec.dtype == np.float32 and rec.shape == phi.shape


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reconstruction_with_gaussian_noise_at_snr_100(seed):
    phi = _bumps()
    images = qdpc.forward_images(phi, SETUP, background=1000.0)
    noisy = images + np.random.default_rng(seed).normal(0, 1000.0 / SNR, images.shape)
    r, mae = _score(qdpc.reconstruct(noisy, SETUP).phase, phi)
    assert r >= 0.9 and mae < 0.05, (r, mae)


ANNULAR = OpticalSetup(wavelength_um=0.53, na_objective=0.5, na_illumination=0.5, na_illumination_inner=0.4,
                       pixel_size_um=6.5, magnification=20)   # BSCCM-like: DPC LEDs between NA 0.4 and 0.5


@pytest.mark.parametrize("setup", [SETUP, ANNULAR], ids=["half-disc", "half-annulus"])
def test_independent_partially_coherent_simulation_of_a_non_weak_object(setup):
    """Abbe imaging of exp(i·phi) (no linearisation): a wrong sign or scale of the transfer functions fails here."""
    phi = _bumps()
    r, mae = _score(qdpc.reconstruct(_abbe(phi, setup) * 800.0, setup).phase, phi)
    assert r >= 0.95 and mae < 0.02, (r, mae)


def test_absorption_is_recovered_and_does_not_leak_into_phase():
    phi, mu = _bumps(), 0.1 * _bumps(shift=(6, -8))
    both = qdpc.reconstruct(_abbe(phi, SETUP, mu=mu), SETUP, absorption=True)
    assert _score(both.phase, phi)[0] >= 0.95
    r_mu, mae_mu = _score(both.absorption, mu)
    assert r_mu >= 0.95 and mae_mu < 0.005, (r_mu, mae_mu)
    only_mu = qdpc.reconstruct(qdpc.forward_images(np.zeros_like(mu), SETUP, absorption=mu), SETUP)
    assert np.abs(only_mu.phase).max() < 0.01 * phi.max()                      # cancelled by the asymmetry images
    assert qdpc.reconstruct(qdpc.forward_images(phi, SETUP), SETUP).absorption is None


# ---------------------------------------------------------------- properties
def test_transfer_functions_follow_the_weak_object_model():
    tf = qdpc.transfer_functions(SETUP, (48, 40))
    assert tf.phase.shape == tf.absorption.shape == (4, 48, 40)
    assert np.allclose(tf.absorption[:, 0, 0], -2.0) and np.allclose(tf.phase[:, 0, 0], 0.0)   # DC: |t|^2 = 1 - 2mu
    assert np.allclose(tf.phase[0] + tf.phase[1], 0, atol=1e-12)   # left + right = a symmetric source: no phase
    assert np.allclose(tf.phase[2] + tf.phase[3], 0, atol=1e-12)
    assert np.allclose(tf.absorption[0], tf.absorption[1]) and np.allclose(tf.absorption[2], tf.absorption[3])
    fx, fy = np.meshgrid(np.fft.fftfreq(40, SETUP.sample_pixel_um), np.fft.fftfreq(48, SETUP.sample_pixel_um))
    beyond = np.hypot(fx, fy) > 1.05 * (SETUP.na_objective + SETUP.na_illumination) / SETUP.wavelength_um
    assert beyond.any() and np.all(tf.phase[:, beyond] == 0) and np.all(tf.absorption[:, beyond] == 0)
    with pytest.raises(ValueError):
        tf.phase[0, 0, 0] = 1                                                    # cached: read-only


def test_zero_phase_gives_zero_and_small_phases_add_linearly():
    zero = qdpc.reconstruct(np.full((4, 32, 32), 500.0), SETUP)
    assert np.all(zero.phase == 0)
    a, b = _bumps(32), _bumps(32, shift=(5, -3))[::-1]

    def rec(phi):
        return qdpc.reconstruct(qdpc.forward_images(phi, SETUP, background=700.0), SETUP).phase.astype(float)

    combined = rec(0.02 * a - 0.01 * b)
    assert np.allclose(combined, 0.02 * rec(a) - 0.01 * rec(b), atol=1e-3 * 0.02 * a.max())
    assert np.allclose(rec(0.02 * a), 2 * rec(0.01 * a), atol=1e-3 * 0.02 * a.max())


def test_phase_map_is_symmetric_under_flips_so_its_channel_spec_is_the_default():
    """Mirroring the sample swaps the left/right (top/bottom) images; the phase map just mirrors."""
    from phenotyping.models.preprocess import channel_specs

    shape = (63, 63)  # odd: the FFT grid is symmetric, so mirrored transfer functions match bin for bin
    phi = _bumps(63)
    images = qdpc.forward_images(phi, SETUP, background=900.0)
    rec = qdpc.reconstruct(images, SETUP).phase
    mirrored_x = qdpc.reconstruct(np.flip(images[[1, 0, 2, 3]], -1), SETUP).phase
    mirrored_y = qdpc.reconstruct(np.flip(images[[0, 1, 3, 2]], -2), SETUP).phase
    assert rec.shape == shape
    assert np.allclose(mirrored_x, np.flip(rec, -1), atol=1e-5)
    assert np.allclose(mirrored_y, np.flip(rec, -2), atol=1e-5)
    (spec,) = channel_specs([qdpc.PHASE_CHANNEL])
    assert (spec.hflip, spec.vflip, spec.rot90) == ("same", "same", True)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("change, message", [
    ({"na_objective": 1.2}, "below the immersion index 1.0.*dry objective has NA < 1"),
    ({"na_objective": 0.4, "na_illumination": 0.5}, "darkfield, not DPC"),
    ({"wavelength_um": 530}, "looks like nanometres"),
    ({"pixel_size_um": 0}, "must be above 0"),
    ({"magnification": float("nan")}, "finite number"),
    ({"na_illumination_inner": 0.4}, "below na_illumination"),
    ({"na_illumination": 0}, "no phase contrast"),
])
def test_bad_optics_are_clear_errors(change, message):
    fields = {"wavelength_um": 0.53, "na_objective": 0.4, "na_illumination": 0.4, "pixel_size_um": 6.5,
              "magnification": 20, **change}
    with pytest.raises(ValueError, match=message):
        OpticalSetup(**fields)


def test_immersion_objective_above_na_1_is_accepted():
    oil = OpticalSetup(wavelength_um=0.53, na_objective=1.3, na_illumination=1.0, pixel_size_um=6.5,
                       magnification=100, immersion_index=1.518)
    assert oil.sample_pixel_um == pytest.approx(0.065)


def test_bad_images_are_clear_errors():
    with pytest.raises(ValueError, match=r"\(4, H, W\).*got shape \(3, 16, 16\)"):
        qdpc.reconstruct(np.ones((3, 16, 16)), SETUP)
    dark = np.ones((4, 16, 16))
    dark[0, :2], dark[1, :2] = 0, 0
    with pytest.raises(ValueError, match="DPC_Left \\+ DPC_Right is 0 or negative at 32 pixel"):
        qdpc.reconstruct(dark, SETUP)
    nan = np.ones((4, 16, 16))
    nan[2, 3, 3] = np.nan
    with pytest.raises(ValueError, match="1 pixel.*NaN"):
        qdpc.reconstruct(nan, SETUP)


# ---------------------------------------------------------------- ingest
def _led_stack(phi: np.ndarray, background: float = 1000.0) -> np.ndarray:
    """A BSCCM LED-array stack whose four DPC channels image ``phi`` (linear model), uint16."""
    images = dict(zip(DPC4, qdpc.forward_images(phi, SETUP, background=background)))
    planes = [images.get(name, np.full(phi.shape, 300.0)) for name in BSCCM_LED]
    return np.round(np.stack(planes)).astype(np.uint16)


def _dpc_bsccm(root: Path, n: int = 3) -> tuple[Path, dict[str, np.ndarray]]:
    phases = {str(i): _bumps(32, shift=(2 * i - 2, 1 - i)) for i in range(n)}
    return build_bsccm(root, n, markers=False, led_arrays={i: _led_stack(phases[str(i)]) for i in range(n)}), phases


def test_bsccm_ingest_derives_phase_and_records_channel_names(store, tmp_path):
    import zarr

    from phenotyping.training.data import channel_names_from_images

    root, phases = _dpc_bsccm(tmp_path / "BSCCM-dpc")
    store.create_sample(Sample(id="B1", specimen=Specimen.blood), actor="t")
    r = ingest_set(store, root, "B1", actor="t", derive=QdpcDerivation(SETUP, raw="keep"))
    assert r.ingested == 3 and not r.rejected
    images = zarr.open(str(root / "BSCCM_images.zarr"), mode="r")
    for c in store.list_cells("B1"):
        assert c.extra["channel_names"] == "DPC_Left,DPC_Right,DPC_Top,DPC_Bottom,qdpc_phase"
        assert "Tian & Waller" in c.extra["derived"] and "na_objective=0.4" in c.extra["derived"]
        assert c.shape == (5, 32, 32) and c.dtype == "float32"
        stored = read_image(store.read_cell_bytes(c), c.source_file)
        led = np.asarray(images[c.source_file])
        raw = led[[BSCCM_LED.index(n) for n in DPC4]]
        assert np.array_equal(stored[:4], raw.astype(np.float32))                # raw kept as they were
        assert np.allclose(stored[4], qdpc.reconstruct(raw, SETUP).phase, atol=1e-6)
        assert _score(stored[4], phases[c.cell_key])[0] >= 0.95
    blobs = []
    for c in store.list_cells("B1"):  # as a training export writes them (the store keeps them in packs)
        blobs.append(tmp_path / f"cell{c.id}.tif")
        blobs[-1].write_bytes(store.read_cell_bytes(c))
    assert channel_names_from_images(blobs) == DPC4 + ["qdpc_phase"]             # what training will read


def test_replace_drops_only_the_half_pupil_images_and_absorption_is_optional(store, tmp_path):
    root, _ = _dpc_bsccm(tmp_path / "BSCCM-dpc", n=2)
    store.create_sample(Sample(id="B1", specimen=Specimen.blood), actor="t")
    r = ingest_set(store, root, "B1", actor="t", bsccm_options={"channels": ["Brightfield", *DPC4]},
                   derive=QdpcDerivation(SETUP, raw="replace", absorption=True))
    assert r.ingested == 2
    (c, _) = store.list_cells("B1")
    assert c.extra["channel_names"] == "Brightfield,qdpc_phase,qdpc_absorption"
    arr = read_image(store.read_cell_bytes(c), c.source_file)
    assert arr.shape == (3, 32, 32) and np.all(arr[0] == 300)


def test_a_set_missing_a_half_pupil_image_is_rejected_per_file(store, tmp_path):
    import tifffile

    d = tmp_path / "set"
    d.mkdir()
    phi = _bumps(32)
    four = qdpc.forward_images(phi, SETUP, background=1000.0).astype(np.float32)
    tifffile.imwrite(d / "good.tif", four, photometric="minisblack",
                     metadata={"axes": "CYX", "Channel": {"Name": DPC4}})
    tifffile.imwrite(d / "three.tif", four[:3], photometric="minisblack",
                     metadata={"axes": "CYX", "Channel": {"Name": DPC4[:3]}})
    (d / "unnamed.tif").write_bytes(encode(four, "tiff"))                      # axes only: names from the manifest
    (d / "bare.tif").write_bytes(encode(four, "tiff"))
    with open(d / "manifest.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "channel_names"])
        w.writerows([["good.tif", ""], ["three.tif", ""], ["unnamed.tif", ",".join(DPC4)], ["bare.tif", ""]])
    store.create_sample(Sample(id="M1", specimen=Specimen.balf), actor="t")
    r = ingest_set(store, d, "M1", actor="t", derive=QdpcDerivation(SETUP, raw="replace"))
    assert r.ingested == 2
    reasons = {x.file: x.reason for x in r.rejected}
    assert set(reasons) == {"three.tif", "bare.tif"}
    assert "missing DPC_Bottom" in reasons["three.tif"] and "DPC_Left, DPC_Right, DPC_Top:" in reasons["three.tif"]
    assert "no channel names" in reasons["bare.tif"] and "channel_names column" in reasons["bare.tif"]
    cells = {c.cell_key: c for c in store.list_cells("M1")}
    direct = qdpc.reconstruct(four, SETUP).phase
    for key in ("good.tif", "unnamed.tif"):
        assert cells[key].extra["channel_names"] == "qdpc_phase"
        assert np.allclose(read_image(store.read_cell_bytes(cells[key]), key)[0], direct, atol=1e-6)


def test_a_bsccm_variant_without_dpc_channels_ingests_nothing_and_says_why(store, tmp_path):
    root, _ = _dpc_bsccm(tmp_path / "BSCCM-dpc", n=2)
    with pytest.raises(IngestError, match="missing DPC_Bottom"):
        ingest_set(store, root, "B2", actor="t", bsccm_options={"channels": DPC4[:3]},
                   derive=QdpcDerivation(SETUP, raw="keep"), create=Sample(id="B2", specimen=Specimen.blood))
    assert not store.sample_exists("B2")


def test_derivation_choices_are_explicit_and_bad_cells_are_named():
    from phenotyping.errors import ImageError

    with pytest.raises(ValueError, match="'keep'.*'replace'"):
        QdpcDerivation(SETUP, raw="both")  # type: ignore[arg-type]
    keep = QdpcDerivation(SETUP, raw="keep")
    four = qdpc.forward_images(_bumps(16), SETUP)
    out, names = keep.apply(four, [n.lower() for n in DPC4], file="a.tif")          # names match ignoring case
    with pytest.raises(ImageError, match="already has channel.*qdpc_phase"):
        keep.apply(out, names, file="a.tif")
    with pytest.raises(ImageError, match=r"2D half-pupil images.*\(4, 3, 16, 16\)"):
        keep.apply(np.stack([four] * 3, 1), DPC4, file="stack.tif")


# ---------------------------------------------------------------- command line
OPTICS = ["--wavelength-um", "0.53", "--na-objective", "0.4", "--na-illumination", "0.4", "--pixel-size-um", "6.5",
          "--magnification", "20"]


def test_cli_derive_qdpc_phase(tmp_path, capsys):
    from phenotyping.__main__ import main
    from phenotyping.cli._common import open_store

    root, _ = _dpc_bsccm(tmp_path / "BSCCM-dpc", n=2)
    db = tmp_path / "lab.duckdb"
    base = ["ingest", str(root), "--sample", "Q1", "--specimen", "blood", "--db", str(db)]
    assert main(base + ["--derive", "qdpc-phase"] + OPTICS) == 2
    assert "--raw-channels keep" in capsys.readouterr().err
    assert main(base + ["--derive", "qdpc-phase", "--raw-channels", "keep", "--wavelength-um", "0.53"]) == 2
    assert "--na-objective, --na-illumination, --pixel-size-um, --magnification missing" in capsys.readouterr().err
    assert main(base + ["--wavelength-um", "0.53"]) == 2
    assert "only apply with --derive" in capsys.readouterr().err
    darkfield = [*OPTICS[:-6], "--na-illumination", "0.6", *OPTICS[-4:]]
    assert main(base + ["--derive", "qdpc-phase", "--raw-channels", "keep"] + darkfield) == 2
    assert "darkfield, not DPC" in capsys.readouterr().err
    (tmp_path / "optics.json").write_text(json.dumps({"wavelength_um": 0.53, "na_objective": 0.4,
                                                      "na_illumination": 0.4, "pixel_size_um": 6.5}))
    assert main(base + ["--derive", "qdpc-phase", "--raw-channels", "replace", "--optics",
                        str(tmp_path / "optics.json"), "--magnification", "20"]) == 0
    assert json.loads(capsys.readouterr().out)["ingested"] == 2
    with open_store(db, read_only=True) as s:
        assert [c.extra["channel_names"] for c in s.list_cells("Q1")] == ["qdpc_phase"] * 2


@pytest.mark.slow
def test_a_model_trains_on_the_derived_channels_with_their_names(store, tmp_path):
    """Derived cells exported the way the app's training job exports them keep their channel names."""
    import tifffile

    from phenotyping.jobs import export_labelled_cells
    from phenotyping.training.train import TrainConfig, train

    d = tmp_path / "set"
    d.mkdir()
    rows = []
    for i in range(16):
        four = qdpc.forward_images(_bumps(24, shift=(i % 4 - 2, i // 4 - 2)) * (1 + i % 2), SETUP, background=900.0)
        tifffile.imwrite(d / f"c{i}.tif", four.astype(np.float32), photometric="minisblack",
                         metadata={"axes": "CYX", "Channel": {"Name": DPC4}})
        rows.append([f"c{i}.tif", "thick" if i % 2 else "thin"])
    with open(d / "manifest.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["path", "label"], *rows])
    store.create_sample(Sample(id="T1", specimen=Specimen.blood), actor="t")
    assert ingest_set(store, d, "T1", actor="t", derive=QdpcDerivation(SETUP, raw="keep")).ingested == 16
    export = export_labelled_cells(store, ["T1"], tmp_path / "export")
    card = train(export.manifest, "label", tmp_path / "m", log=lambda m: None,
                 config=TrainConfig(arch="test_cnn", epochs=1, seed=0, batch_size=8))
    assert card["input"]["channels"] == DPC4 + ["qdpc_phase"]
    assert card["input"]["channel_names_from"] == "image metadata"
    specs = {s["name"]: s for s in card["input"]["channel_specs"]}
    assert (specs["qdpc_phase"]["hflip"], specs["qdpc_phase"]["vflip"]) == ("same", "same")
    assert specs["DPC_Left"]["hflip"] == "swap:DPC_Right"
