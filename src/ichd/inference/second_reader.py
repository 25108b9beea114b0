"""BLAST-CT as an optional second reader: lesion segmentation and volumes (mL) on the HU volume ichd has read.

BLAST-CT (Monteiro et al., Lancet Digital Health 2020; ``pip install -e ".[blast-ct]"``, Apache-2.0) is a 3-D
DeepMedic that labels every voxel as background (0), intraparenchymal haemorrhage (1, IPH), extra-axial
haemorrhage (2, EAH: subdural + epidural), perilesional oedema (3) or intraventricular haemorrhage (4, IVH). Its
weights are not in the wheel and its console command downloads them: here they come from a folder
(``--blast-ct-models DIR``, default ``$ICHD_BLAST_CT`` or ``<ICHD_DATA>/../models/blast-ct``) and nothing is
downloaded.

The segmentation is BLAST-CT's own inference, run in memory on ``CTSeries.hu`` (no NIfTI round trip, no re-read of
the DICOM), with BLAST-CT's own functions for every step that decides the result: the volume is placed in space
exactly as ``ichd.io.nifti.write_nifti`` + SimpleITK would read it (int16 when the HU are integers; L/P/S axes,
spacing (x, y, z)), reoriented and resampled to 1 mm (``blast_ct.nifti.rescale``), windowed to [-15, 100] HU
(``IntensityWindowNormalization``), segmented, and the 1 mm label map resampled back to the series' grid by nearest
neighbour (as ``NiftiPatchSaver``). Volumes are voxel counts on that native grid times the voxel volume, as
BLAST-CT's ``prediction.csv`` reports them.

Two exact speed-ups over BLAST-CT's patch loop (which predicts 30^3 output voxels from each 110^3 input patch):

- **Larger blocks on the same lattice.** DeepMedic is fully convolutional; its 3x and 5x sub-sampled paths sample
  voxels at offsets fixed relative to the output block's start. Blocks whose output edges are multiples of 30 and
  start on BLAST-CT's 30-voxel grid therefore give the same logits as the 30^3 tiles they cover, while the
  valid-convolution margins (16 voxels per path) are paid once per block instead of once per tile.
- **Constant inputs.** A block whose whole input window is one value (air and fat below -15 HU all map to -1) has
  a spatially constant output; it is computed once per value on a 110^3 patch and reused.

The hemorrhage volume is IPH + EAH + IVH (oedema is not hemorrhage). These volumes come from BLAST-CT's voxel
labels only: ichd never derives a volume from its own class-activation maps.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ichd.errors import DependencyError, InputError, ModelError
from ichd.types import CTSeries

#: Names ``--second-reader`` accepts.
SECOND_READERS: tuple[str, ...] = ("blast-ct",)
#: BLAST-CT's label values 1..4, by name (its ``prediction.csv`` column prefixes).
CLASS_NAMES: tuple[str, ...] = ("iph", "eah", "oedema", "ivh")
CLASS_TITLES: dict[str, str] = {
    "iph": "intraparenchymal hemorrhage (IPH)",
    "eah": "extra-axial hemorrhage (EAH: subdural + epidural)",
    "oedema": "perilesional oedema",
    "ivh": "intraventricular hemorrhage (IVH)",
}
#: Display colours (RGB) of the label values 1..4 in overlays and the DICOM SEG.
CLASS_COLORS: dict[str, tuple[int, int, int]] = {
    "iph": (230, 40, 40), "eah": (250, 160, 20), "oedema": (60, 140, 255), "ivh": (170, 60, 230)}
#: The classes that count as hemorrhage in ``hemorrhage_ml``.
HEMORRHAGE_CLASSES: tuple[str, ...] = ("iph", "eah", "ivh")
#: Weight files used when none are named: one model (the ensemble of three costs three times as long).
DEFAULT_MODELS: tuple[str, ...] = ("model_1",)
#: Environment variable naming the weights folder.
MODELS_ENV = "ICHD_BLAST_CT"
#: BLAST-CT's output tile edge (voxels at 1 mm); blocks are multiples of it.
TILE = 30
#: Default output block edge (voxels at 1 mm), measured fastest on 2 cores (docs/results.md).
DEFAULT_BLOCK = 90
INSTALL_HINT = 'install the optional extra: pip install -e ".[blast-ct]" (or pip install blast-ct==2.1.0)'

ProgressFn = Callable[[int, int], None]


def default_models_dir() -> Path:
    """``$ICHD_BLAST_CT``, else ``models/blast-ct`` beside the data folder (``<ICHD_DATA>/../models/blast-ct``)."""
    env = os.environ.get(MODELS_ENV)
    if env:
        return Path(env)
    from ichd.paths import data_dir

    return data_dir(must_exist=False).parent / "models" / "blast-ct"


def parse_models(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"model_1,model_3"`` -> ("model_1", "model_3"); ``.pt`` suffixes dropped; ``None`` -> the default."""
    if text is None:
        return DEFAULT_MODELS
    parts = text.split(",") if isinstance(text, str) else list(text)
    names = tuple(dict.fromkeys(p.strip().removesuffix(".pt") for p in parts if p.strip()))
    if not names:
        raise InputError(f"--blast-ct-ensemble {text!r} names no model", hint="e.g. model_1 or model_1,model_3,model_6")
    return names


def _blast_ct() -> Any:
    try:
        import blast_ct
        import SimpleITK  # noqa: F401  (blast-ct's dependency; checked here for a clear message)
    except ImportError as e:
        raise DependencyError(f"--second-reader blast-ct needs the blast-ct package, which is not installed ({e.name})",
                              hint=INSTALL_HINT) from e
    return blast_ct


@dataclass
class SecondReading:
    """BLAST-CT's result for one series.

    Attributes:
        labels: uint8 (z, y, x) on the series' grid (``CTSeries.hu``): 0 background, 1 IPH, 2 EAH, 3 oedema, 4 IVH.
        volumes_ml: per class (:data:`CLASS_NAMES`), mL.
        hemorrhage_ml: IPH + EAH + IVH, mL.
        models: the weight files used (names), their sha256 (first 16 hex digits).
        seconds: wall time of the segmentation.
        settings: threads, block edge, blocks computed / reused.
    """

    labels: np.ndarray
    volumes_ml: dict[str, float]
    hemorrhage_ml: float
    models: list[dict[str, str]]
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)

    def slice_volumes_ml(self, voxel_ml: float) -> np.ndarray:
        """(z, 4) mL per slice and class."""
        return np.stack([(self.labels == k).sum(axis=(1, 2)) for k in range(1, 5)], axis=1) * voxel_ml

    def to_dict(self) -> dict[str, Any]:
        """The ``second_reader`` block of the prediction JSON (without the ensemble score)."""
        return {"name": "blast-ct", "version": "v1 weights, blast-ct 2.1.0",
                "models": [dict(m) for m in self.models],
                "volumes_ml": {k: round(float(self.volumes_ml[k]), 2) for k in CLASS_NAMES},
                "hemorrhage_ml": round(float(self.hemorrhage_ml), 2),
                "slices_with_hemorrhage": [int(i) for i in np.flatnonzero(
                    np.isin(self.labels, [1, 2, 4]).any(axis=(1, 2)))],
                "seconds": round(float(self.seconds), 2),
                "settings": dict(self.settings)}


def _sha16(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _flush_denormals(state: dict[str, Any]) -> dict[str, Any]:
    """Zero the denormal floats of a state dict (some stored BLAST-CT weights are; they slow CPU convolutions
    ~100x). Only values below float32's smallest normal (~1.2e-38) change."""
    import torch

    tiny = torch.finfo(torch.float32).tiny
    out = {}
    for k, v in state.items():
        if torch.is_tensor(v) and v.is_floating_point():
            v = torch.where(v.abs() < tiny, torch.zeros_like(v), v)
        out[k] = v
    return out


class BlastCT:
    """BLAST-CT models loaded from a weights folder; :meth:`segment` runs them on a :class:`CTSeries`."""

    def __init__(self, models_dir: str | os.PathLike[str] | None = None, models: Sequence[str] | str | None = None,
                 *, threads: int | None = None, block: int = DEFAULT_BLOCK, channels_last: bool = True) -> None:
        blast_ct = _blast_ct()
        import torch
        from blast_ct.read_config import get_model

        if block < TILE or block % TILE:
            raise InputError(f"BLAST-CT block edge {block} must be a multiple of {TILE}", hint=f"e.g. {DEFAULT_BLOCK}")
        folder = Path(models_dir) if models_dir is not None else default_models_dir()
        names = parse_models(models)
        if not folder.is_dir():
            raise ModelError(f"BLAST-CT weights folder {str(folder)!r} does not exist",
                             hint="give the folder holding model_1.pt ... with --blast-ct-models DIR (or set "
                                  f"{MODELS_ENV}); the weights are not downloaded")
        files = [folder / f"{n}.pt" for n in names]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            have = sorted(p.stem for p in folder.glob("*.pt"))
            raise ModelError(f"BLAST-CT weights {', '.join(missing)} not found in {str(folder)!r} "
                             f"(it holds: {', '.join(have) or 'no .pt files'})",
                             hint="name files of that folder with --blast-ct-ensemble, e.g. "
                                  + (",".join(have[:3]) if have else "model_1"))
        self.config = json.loads((Path(blast_ct.__file__).parent / "data" / "config.json").read_text())
        self.threads = threads
        self.block = int(block)
        self.channels_last = bool(channels_last)
        self.models: list[Any] = []
        self.identity: list[dict[str, str]] = []
        for f in files:
            try:
                state = torch.load(f, map_location="cpu", weights_only=True)
                model = get_model(self.config)
                model.load_state_dict(_flush_denormals(state), strict=True)
            except Exception as e:  # a truncated file, another network's weights: say which file
                raise ModelError(f"{str(f)!r} is not a BLAST-CT v1 state dict ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0][:160] if str(e) else ''})",
                                 hint="use the model_N.pt files of BLAST-CT's v1 ensemble") from e
            model.eval()
            if self.channels_last:
                model.to(memory_format=torch.channels_last_3d)
            self.models.append(model)
            self.identity.append({"file": f.name, "sha256_16": _sha16(f)})
        data = self.config["data"]
        self.resolution = tuple(float(r) for r in data["resolution"])
        self.window = data["transformation"]["IntensityWindowNormalization"]

    # -- geometry, exactly as write_nifti + SimpleITK + BLAST-CT's dataset -------------------------------------------
    @staticmethod
    def _native_image(series: CTSeries) -> Any:
        """The series as the SimpleITK image that reading ``write_nifti(series)``'s file gives."""
        import SimpleITK as sitk

        sz, sy, sx = (s if np.isfinite(s) and s > 0 else 1.0 for s in series.spacing_mm)
        hu = np.asarray(series.hu)
        if np.array_equal(hu, np.round(hu)) and hu.min() >= -32768 and hu.max() <= 32767:
            hu = hu.astype(np.int16)
        else:
            hu = hu.astype(np.float32)
        image = sitk.GetImageFromArray(np.ascontiguousarray(hu))  # (z, y, x) -> size (x, y, z)
        z0 = float(series.positions_mm[0]) if len(series.positions_mm) and np.isfinite(series.positions_mm[0]) \
            else 0.0
        # a NIfTI header stores the affine in float32: the same rounding keeps the result identical to BLAST-CT's
        # own run on write_nifti's file (the network is sensitive to sub-HU differences of the resampled input)
        image.SetSpacing(tuple(float(np.float32(v)) for v in (sx, sy, sz)))
        image.SetOrigin((0.0, 0.0, float(np.float32(z0))))  # RAS (0, 0, z0) of the affine is LPS (-0, -0, z0)
        image.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
        return image

    def _model_input(self, native: Any) -> tuple[np.ndarray, Any]:
        """BLAST-CT's network input (z, y, x) float32 at 1 mm, and the reoriented 1 mm image (for the way back)."""
        import SimpleITK as sitk
        from blast_ct.nifti.rescale import reorient_image, rescale
        from blast_ct.nifti.transformation import IntensityWindowNormalization

        image = reorient_image(native, False)
        image = rescale(list(self.resolution), image)
        array = sitk.GetArrayFromImage(image).astype(np.float32)[None]
        norm = IntensityWindowNormalization(**self.window)
        array, _, _ = norm(array, None, np.ones_like(array[0]))
        return array[0], image

    def _to_native(self, labels_1mm: np.ndarray, native: Any) -> np.ndarray:
        """The 1 mm label map back on the series' grid (``NiftiPatchSaver.save_image``)."""
        import SimpleITK as sitk
        from blast_ct.nifti.rescale import create_reference_reoriented_image

        image = sitk.GetImageFromArray(labels_1mm.astype(np.uint8))
        reference = create_reference_reoriented_image(native)
        image.SetOrigin(reference.GetOrigin())
        image.SetDirection(reference.GetDirection())
        image.SetSpacing(self.resolution)
        image = sitk.Resample(image, native, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        return sitk.GetArrayFromImage(image).astype(np.uint8)

    # -- blocks --------------------------------------------------------------------------------------------------
    @staticmethod
    def _cells(shape: tuple[int, ...]) -> tuple[int, ...]:
        """BLAST-CT's tile count per axis (``get_center_points``: ``s // 30 + 1``)."""
        return tuple(s // TILE + 1 for s in shape)

    @staticmethod
    def _constant_cells(array: np.ndarray, cells: tuple[int, ...], margin: int) -> np.ndarray:
        """Per 30^3 tile: is its whole (edge-padded) input window one value?"""
        out = np.zeros(cells, dtype=bool)
        for idx in np.ndindex(*cells):
            # the window clipped to the image: an edge-padded part repeats the edge voxels, which are inside it
            part = array[tuple(slice(max(0, TILE * i - margin), min(s, TILE * (i + 1) + margin))
                               for i, s in zip(idx, array.shape))]
            out[idx] = bool(part.min() == part.max())
        return out

    @staticmethod
    def _chunks(lo: int, hi: int, k: int) -> list[tuple[int, int]]:
        """[lo, hi) cut into ceil(n / k) nearly equal runs of at most k cells."""
        n = hi - lo
        parts = max(1, math.ceil(n / k))
        bounds = [lo + round(i * n / parts) for i in range(parts + 1)]
        return [(a, b) for a, b in itertools.pairwise(bounds) if b > a]

    def _forward(self, patch: np.ndarray) -> np.ndarray:
        """Mean softmax of the models on one input block (z, y, x) -> (5, z', y', x')."""
        import torch

        x = torch.from_numpy(np.ascontiguousarray(patch, dtype=np.float32))[None, None]
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        total = None
        with torch.inference_mode():
            for model in self.models:
                logits, _ = model(x)
                prob = torch.softmax(logits, dim=1)
                total = prob if total is None else total + prob
        assert total is not None
        return (total[0] / len(self.models)).contiguous().numpy()

    def _segment_1mm(self, array: np.ndarray, progress: ProgressFn | None) -> tuple[np.ndarray, dict[str, Any]]:
        from blast_ct.nifti.patch_samplers import PatchSampler

        model = self.models[0]
        margin = (model.calculate_input_size((TILE, TILE, TILE))[0] - TILE) // 2  # 40 voxels per side
        cells = self._cells(array.shape)
        constant = self._constant_cells(array, cells, margin)
        labels = np.zeros(tuple(c * TILE for c in cells), dtype=np.uint8)
        cache: dict[float, int] = {}

        def constant_label(value: float) -> int:
            if value not in cache:
                tile = np.full((TILE + 2 * margin,) * 3, value, dtype=np.float32)
                cache[value] = int(np.argmax(self._forward(tile)[:, 0, 0, 0]))
            return cache[value]

        active = np.argwhere(~constant)
        blocks: list[tuple[tuple[int, int], ...]] = []
        if len(active):
            lo, hi = active.min(axis=0), active.max(axis=0) + 1
            per_axis = [self._chunks(int(a), int(b), self.block // TILE) for a, b in zip(lo, hi)]
            blocks = [tuple(b) for b in np.ndindex(*[len(p) for p in per_axis])]
            blocks = [tuple(per_axis[d][i] for d, i in enumerate(b)) for b in blocks]
        # constant tiles first (cheap), then the computed blocks overwrite their region
        for idx in np.argwhere(constant):
            region = tuple(slice(TILE * i, TILE * (i + 1)) for i in idx)
            window = tuple(min(TILE * int(i) + TILE // 2, s - 1) for i, s in zip(idx, array.shape))
            labels[region] = constant_label(float(array[window]))
        skipped = 0
        for n, block in enumerate(blocks, 1):
            sub = constant[tuple(slice(a, b) for a, b in block)]
            out_shape = tuple(TILE * (b - a) for a, b in block)
            region = tuple(slice(TILE * a, TILE * b) for a, b in block)
            if sub.all():
                skipped += 1
            else:
                in_shape = model.calculate_input_size(out_shape)
                center = tuple(TILE * a + o // 2 for (a, _), o in zip(block, out_shape))
                sampler = PatchSampler(in_shape, out_shape)
                patch = sampler.get_image_patch(array[None], center)[0]
                labels[region] = np.argmax(self._forward(patch), axis=0).astype(np.uint8)
            if progress is not None:
                progress(n, len(blocks))
        crop = tuple(slice(0, s) for s in array.shape)
        info = {"tiles_30": int(np.prod(cells)), "constant_tiles": int(constant.sum()), "blocks": len(blocks),
                "blocks_skipped": skipped}
        return labels[crop], info

    def segment(self, series: CTSeries, progress: ProgressFn | None = None) -> SecondReading:
        """Segment ``series`` (its HU volume) and measure the lesion volumes.

        ``progress(done, total)`` is called after each block. Raises :class:`InputError` for a volume BLAST-CT
        cannot segment (fewer than 2 slices, unknown spacing).
        """
        if series.n_slices < 2:
            raise InputError("the BLAST-CT second reader segments 3-D volumes; this series has one slice",
                             hint="drop --second-reader for single images")
        if not all(np.isfinite(s) and s > 0 for s in series.spacing_mm):
            raise InputError("the BLAST-CT second reader needs the voxel spacing in mm, which this input lacks "
                             "(windowed images)", hint="give DICOM or NIfTI input, or drop --second-reader")
        t0 = time.perf_counter()
        with _torch_settings(self.threads):
            native = self._native_image(series)
            array, _ = self._model_input(native)
            labels_1mm, info = self._segment_1mm(array, progress)
            labels = self._to_native(labels_1mm, native)
        voxel_ml = float(np.prod(native.GetSpacing())) / 1000.0
        counts = np.bincount(labels.ravel(), minlength=5)
        volumes = {name: float(counts[k + 1]) * voxel_ml for k, name in enumerate(CLASS_NAMES)}
        import torch

        settings = {"threads": int(torch.get_num_threads()) if self.threads is None else int(self.threads),
                    "block": self.block, "channels_last": self.channels_last, **info}
        return SecondReading(labels=labels, volumes_ml=volumes,
                             hemorrhage_ml=float(sum(volumes[c] for c in HEMORRHAGE_CLASSES)),
                             models=list(self.identity), seconds=time.perf_counter() - t0, settings=settings)


@contextlib.contextmanager
def _torch_settings(threads: int | None) -> Iterator[None]:
    """torch threads (when given) and flushing of denormal floats for the run; both restored after."""
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(before)


def overlay_rgb(hu: np.ndarray, labels: np.ndarray, *, alpha: float = 0.45) -> np.ndarray:
    """One slice in the brain window with the label map drawn on it: each class filled in its colour
    (:data:`CLASS_COLORS`, ``alpha``) with an opaque outline. uint8 (rows, columns, 3)."""
    from ichd.explain.overlay import BRAIN_WINDOW, display_image

    gray = display_image(np.asarray(hu, dtype=np.float32), BRAIN_WINDOW)
    return draw_labels(np.repeat(gray[..., None] * 255.0, 3, axis=2), labels, alpha=alpha)


def draw_labels(rgb: np.ndarray, labels: np.ndarray, *, alpha: float = 0.45) -> np.ndarray:
    """``labels`` drawn on an RGB image (0..255, same rows/columns): each class filled in its colour with an
    opaque outline. uint8 (rows, columns, 3)."""
    from scipy.ndimage import binary_erosion

    rgb = np.asarray(rgb, dtype=np.float32).copy()
    for k, name in enumerate(CLASS_NAMES, start=1):
        mask = labels == k
        if not mask.any():
            continue
        colour = np.asarray(CLASS_COLORS[name], dtype=np.float32)
        rgb[mask] = (1.0 - alpha) * rgb[mask] + alpha * colour
        rgb[mask & ~binary_erosion(mask)] = colour
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def shown_slices(labels: np.ndarray, flagged: Sequence[int] = (), *, most: int = 6) -> list[int]:
    """The slices to show with the overlay: ichd's flagged slices, then the slices with the largest hemorrhage
    area (IPH + EAH + IVH voxels), at most ``most``, in slice order."""
    area = np.isin(labels, [1, 2, 4]).sum(axis=(1, 2))
    chosen = list(dict.fromkeys(int(i) for i in flagged if 0 <= int(i) < labels.shape[0]))[:most]
    for i in np.argsort(-area, kind="stable"):
        if len(chosen) >= most or area[i] == 0:
            break
        if int(i) not in chosen:
            chosen.append(int(i))
    return sorted(chosen)


def load_reader(name: str | None, models_dir: str | os.PathLike[str] | None = None,
                models: Sequence[str] | str | None = None, *, threads: int | None = None) -> BlastCT | None:
    """The second reader ``name`` (``--second-reader``) loaded, or None for ``None``/``"none"``."""
    if name is None or name.strip().lower() in ("", "none"):
        return None
    key = name.strip().lower()
    if key not in SECOND_READERS:
        from ichd.errors import did_you_mean

        raise InputError(f"unknown second reader {name!r}; {did_you_mean(key, SECOND_READERS)}")
    return BlastCT(models_dir, models, threads=threads)


NOTE = ("Volumes from BLAST-CT's voxel segmentation (v1 weights; research use, not a medical device). ichd's own "
        "heat maps are not segmentations and give no volume.")
