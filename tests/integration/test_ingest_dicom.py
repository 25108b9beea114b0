"""Integration tests of read_ct on the real DICOM in ../shared/data (CQ500, GE tilt, pydicom-693, RSNA, HU slices)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ichd.constants import AIR_HU
from ichd.errors import InputError
from ichd.io import read_ct
from ichd.io.summary import series_summary
from ichd.types import CTSeries

CQ500_SERIES = "cq500/CQ500-CT-0/series-6_4cc-sec-150cc-D3D-on"


def codes(series: CTSeries) -> list[str]:
    return [w.code for w in series.warnings]


@pytest.fixture(scope="module")
def cq500(data_root: Path) -> CTSeries:
    (series,) = read_ct(data_root / CQ500_SERIES)
    return series


def test_cq500_jpeg_lossless_series(cq500: CTSeries) -> None:
    s = cq500
    assert s.n_slices == 238 and s.hu.shape == (238, 512, 512) and s.hu.dtype == np.float32
    assert s.meta["transfer_syntaxes"] == ["1.2.840.10008.1.2.4.70"]
    assert np.all(np.diff(s.positions_mm) > 0)  # strictly monotonic, inferior -> superior
    assert len(set(s.sop_instance_uids)) == 238
    assert s.tilt_deg == pytest.approx(8.5)
    assert "gantry_tilt" in codes(s)
    # 0.625 mm table steps along z are 0.625 * cos(8.5°) along the tilted normal
    assert s.spacing_mm[0] == pytest.approx(0.625 * math.cos(math.radians(8.5)), abs=1e-3)
    assert s.spacing_mm[1:] == pytest.approx((0.443359, 0.443359))
    # instance 237 is missing: one gap of two steps, between the 236th and 237th slices read
    assert len(s.meta["gaps"]) == 1
    gap = s.meta["gaps"][0]
    assert gap["after_index"] == 235 and gap["step_mm"] == pytest.approx(2 * s.spacing_mm[0], abs=1e-3)
    assert "gap" in codes(s) and not s.meta["duplicates"]


def test_cq500_hu_values(cq500: CTSeries) -> None:
    s = cq500
    assert s.hu.min() == AIR_HU  # the -2000 padding (-3024 HU) became air
    middle = s.hu[119]
    inside_air = middle[(middle > -1100) & (middle < -900)]
    assert -1020 < float(np.median(inside_air)) < -990  # air inside the FOV is about -1009 HU
    soft = middle[(middle > 0) & (middle < 100)]
    assert 20 < float(np.median(soft)) < 50


def test_cq500_order_matches_instance_numbers(data_root: Path, cq500: CTSeries) -> None:
    import pydicom

    folder = data_root / CQ500_SERIES
    inst = {}
    for path in folder.glob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        inst[str(ds.SOPInstanceUID)] = int(ds.InstanceNumber)
    numbers = [inst[uid] for uid in cq500.sop_instance_uids]
    assert numbers == sorted(numbers) and numbers[0] == 1 and 237 not in numbers


def test_cq500_single_slice(data_root: Path) -> None:
    (s,) = read_ct(data_root / "cq500/CQ500-CT-1")
    assert s.n_slices == 1 and s.tilt_deg == pytest.approx(15.0)
    assert s.spacing_mm[0] == pytest.approx(5.0)  # one slice: SliceThickness


def test_ge_tilt_and_uneven_spacing(data_root: Path) -> None:
    (s,) = read_ct(data_root / "edge-cases/ge-tilt")
    assert s.n_slices == 8 and s.tilt_deg == pytest.approx(18.5)
    np.testing.assert_allclose(np.diff(s.positions_mm), [4, 4, 4, 1.08, 7, 7, 7], atol=0.01)
    assert s.meta["uneven_spacing"]
    assert {"gantry_tilt", "uneven_spacing", "gap"} <= set(codes(s))
    assert s.hu.min() == AIR_HU  # PixelPaddingValue -1500 -> air


def test_pydicom_693_jpeg2000_lossless_equals_uncompressed(data_root: Path) -> None:
    folder = data_root / "edge-cases/pydicom-693"
    hu = {name: read_ct(folder / f"693_{name}.dcm")[0].hu for name in ("UNCR", "J2KR", "UNCI", "J2KI")}
    np.testing.assert_array_equal(hu["J2KR"], hu["UNCR"])
    np.testing.assert_array_equal(hu["J2KI"], hu["UNCI"])
    assert not np.array_equal(hu["J2KI"], hu["UNCR"])
    # the folder as a whole: one slice, duplicates reported, the lossless copy kept
    (s,) = read_ct(folder)
    assert s.n_slices == 1 and {"duplicate_instance", "duplicate_position"} <= set(codes(s))
    np.testing.assert_array_equal(s.hu, hu["UNCR"])


def test_rsna_samples(data_root: Path) -> None:
    series = read_ct(data_root / "rsna-samples")
    assert len(series) == 10 and all(s.n_slices == 1 for s in series)
    assert len({s.study_instance_uid for s in series}) == 10
    for s in series:
        assert "invalid_uid" in codes(s)  # RSNA pseudo-UIDs like ID_...
        assert "bad_intercept_fixed" not in codes(s)
        hu = s.hu[0]
        fov = hu[hu != AIR_HU]
        assert -1015 < float(np.percentile(fov, 2)) < -990  # air inside the FOV
        assert s.sop_instance_uids[0].startswith("ID_")
    by_name = {Path(s.source).name: s for s in series}
    assert "ID_2008dd408_epidural_subarachnoid_subdural.dcm" in by_name


def test_hu_slices_need_allow_secondary_capture(data_root: Path) -> None:
    with pytest.raises(InputError, match="allow-secondary-capture"):
        read_ct(data_root / "hu-slices/dicom")


def test_hu_slices_are_real_hu(data_root: Path) -> None:
    series = read_ct(data_root / "hu-slices/dicom", allow_secondary_capture=True)
    assert len(series) == 26
    for s in series:
        assert s.n_slices == 1 and "secondary_capture" in codes(s)
        hu = s.hu[0]
        mask = np.asarray(Image.open(Path(s.source.replace("/dicom/", "/masks/")).with_suffix(".png"))) > 0
        assert -1010 <= float(np.percentile(hu, 1)) <= -990  # air
        brain = hu[(hu > 0) & (hu < 100) & ~mask]
        assert 20 <= float(np.median(brain)) <= 45  # brain tissue
        assert 35 <= float(np.median(hu[mask])) <= 80  # acute blood


def test_summary_of_every_dicom_set_is_json_ready(data_root: Path, cq500: CTSeries) -> None:
    import json

    for s in [cq500, *read_ct(data_root / "edge-cases/ge-tilt"), *read_ct(data_root / "rsna-samples")]:
        json.dumps(series_summary(s), allow_nan=False)
