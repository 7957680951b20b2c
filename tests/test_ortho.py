"""Orthomosaics streamed window by window (weedseg.infer.ortho): the windows' mask is the whole image's, resume,
nodata, bands, 16-bit, unreadable windows and the COG written."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from affine import Affine

from weedseg import WeedsegError
from weedseg.data.io import read_rgb
from weedseg.infer import ortho
from weedseg.infer.geo import GroundOptions
from weedseg.infer.ortho import NODATA, OrthoOptions, segment_ortho
from weedseg.infer.session import DEFAULT_MODEL, Segmenter
from weedseg.infer.tiling import predict_mask

E0, N0, GSD = 500_000.0, 4_100_000.0, 0.01  # UTM 33N, 1 cm pixels
TILE, OVERLAP = 128, 32
TRANSFORM = Affine(GSD, 0.0, E0, 0.0, -GSD, N0)


@pytest.fixture(scope="module")
def seg() -> Segmenter:
    return Segmenter(DEFAULT_MODEL, threads=1)


@pytest.fixture(scope="module")
def field(peanut_root) -> np.ndarray:
    """A 700 x 450 RGB field: two real peanut photos side by side, reduced."""
    import cv2

    photos = [cv2.resize(read_rgb(peanut_root / "images" / f"{i}.jpg"), (350, 450), interpolation=cv2.INTER_AREA)
              for i in ("0001", "0360")]
    return np.concatenate(photos, axis=1)


def write_raster(path, rgb: np.ndarray, **extra) -> rasterio.io.DatasetWriter:
    h, w = rgb.shape[:2]
    profile = dict(driver="GTiff", width=w, height=h, count=3, dtype=rgb.dtype.name, crs="EPSG:32633",
                   transform=TRANSFORM, tiled=True, blockxsize=128, blockysize=128,
                   compress="deflate")
    profile.update(extra)
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(rgb.transpose(2, 0, 1))
    return path


def run(seg, path, tmp_path, **options):
    mask = tmp_path / "out" / f"{path.stem}.mask.tif"
    ortho_options = OrthoOptions(input_gsd_cm=100 * GSD, **options)  # native scale unless said
    info = segment_ortho(path, mask, seg, GroundOptions(), ortho_options, TILE, OVERLAP, 2, progress=False)
    with rasterio.open(mask) as ds:
        return ds.read(1), {**ds.profile, "crs": ds.crs, "overviews": ds.overviews(1)}, info


def test_windows_make_the_whole_image_mask_and_a_cog(seg, field, tmp_path, monkeypatch):
    monkeypatch.setattr(ortho, "WINDOW_MODEL_PX", 200)  # windows of two tiles across: several rows and columns
    path = write_raster(tmp_path / "field.tif", field)
    mask, ds, info = run(seg, path, tmp_path)
    whole = predict_mask(seg.model_input(field), seg.run, *field.shape[:2], TILE, OVERLAP, 2, seg.info.size_multiple)
    assert np.array_equal(mask, whole)
    assert (ds["crs"].to_epsg(), ds["transform"], ds["nodata"]) == (32633, TRANSFORM, NODATA)
    assert ds["tiled"] and ds["compress"] == "deflate" and ds["overviews"]
    assert info["scale"] == 1.0 and not (tmp_path / "out" / "field.mask.tif.partial").exists()


def test_a_killed_run_resumes_by_row_to_the_same_mask(seg, field, tmp_path, monkeypatch):
    monkeypatch.setattr(ortho, "WINDOW_MODEL_PX", 200)
    monkeypatch.setattr(ortho, "BLOCK", 64)
    path = write_raster(tmp_path / "field.tif", field)
    expected, _, _ = run(seg, path, tmp_path / "a")
    real_band, calls = ortho.OrthoSegmenter.band, []

    def dies_at_row_3(self, r, carries, out):
        calls.append(r)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as a kill would, after two rows were saved
        return real_band(self, r, carries, out)

    monkeypatch.setattr(ortho.OrthoSegmenter, "band", dies_at_row_3)
    with pytest.raises(KeyboardInterrupt):
        run(seg, path, tmp_path / "b")
    monkeypatch.setattr(ortho.OrthoSegmenter, "band", real_band)
    calls.clear()
    resumed, _, _ = run(seg, path, tmp_path / "b")
    assert np.array_equal(resumed, expected)


def test_nodata_alpha_bands_and_16_bit(seg, field, tmp_path):
    h, w = field.shape[:2]
    alpha = np.full((h, w, 1), 255, np.uint8)
    alpha[:, :100] = 0  # outside the field
    rgba = write_raster(tmp_path / "rgba.tif", np.concatenate([field, alpha], axis=2), count=4,
                        photometric="RGB", alpha="YES")
    mask, _, _ = run(seg, rgba, tmp_path)
    assert (mask[:, :100] == NODATA).all() and (mask[:, 100:] < 3).all()

    nir = np.concatenate([field[..., :1], field], axis=2)  # a NIR band first, then R, G, B, 16-bit
    wide = write_raster(tmp_path / "nir.tif", (nir.astype(np.uint16) * 40 + 300), count=4)
    with pytest.raises(WeedsegError, match="--bands"):
        run(seg, wide, tmp_path)
    mask16, _, info = run(seg, wide, tmp_path, bands=(2, 3, 4))
    assert info["stretch"]["low"][0] >= 300 and info["stretch"]["high"][0] <= 255 * 40 + 300
    plain, _, _ = run(seg, write_raster(tmp_path / "plain.tif", field), tmp_path)
    assert (mask16 == plain).mean() > 0.9  # a percentile stretch of the same field


def test_model_scale_from_the_photo_ratio(seg, field, tmp_path):
    path = write_raster(tmp_path / "field.tif", field)
    mask = tmp_path / "out" / "field.mask.tif"
    info = segment_ortho(path, mask, seg, GroundOptions(), OrthoOptions(), 256, 64, 2, progress=False)
    assert info["scale"] == pytest.approx(480 / 720) and "photo-to-input" in info["scale_source"]
    with rasterio.open(mask) as ds:
        assert ds.shape == field.shape[:2] and (ds.read(1) < 3).all()
