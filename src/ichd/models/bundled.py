"""Models that ship inside the package, and model bundles in general.

A *bundle* is a folder with a ``manifest.json``, the weights files it names, and a ``model_card.md``::

    src/ichd/resources/models/<name>/
        manifest.json      name, version, aliases, files {role: {path, sha256, bytes}}, thresholds, metrics,
                           training_sources (optional, see below), ...
        model_card.md      training data and licence, preprocessing, metrics with CIs, thresholds, intended use
        cnn.pt             the slice CNN checkpoint (ichd.models.checkpoint format)
        sequence.pt        optional: feature selector + sequence model checkpoint

Every weights file's sha256 is recorded in the manifest and checked when the bundle is loaded
(:meth:`BundledModel.verify`); a mismatch is a :class:`~ichd.errors.ModelError`. Bundles shipped in the package
are listed by :func:`list_bundled` and found by name or alias (``"default"``) with :func:`get_bundled`; any other
bundle folder is read with :func:`read_bundle`. :func:`write_bundle` makes one from trained checkpoints.

The optional manifest key ``training_sources`` says exactly which data the weights were fitted on, as a list of
``{"source": NAME, "patients": "all" | [patient id, ...]}`` (e.g. ``[{"source": "ct-ich", "patients": "all"}]``;
source names as in the shared data folder: ``ct-ich``, ``rsna-series``, ...). :meth:`BundledModel.trained_on`
answers "was this patient in the training data?" from it: True, False, or None when the manifest does not say
(older bundles, plain checkpoints). ``training_data`` stays the human-readable description.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ichd.constants import LABELS
from ichd.errors import ModelError, did_you_mean
from ichd.paths import package_resource
from ichd.utils.files import sha256_file

#: File name of a bundle's manifest.
MANIFEST_NAME = "manifest.json"
#: Manifest layout identifier and version.
BUNDLE_FORMAT = "ichd-model-bundle"
BUNDLE_FORMAT_VERSION = 1
#: Weights roles a bundle may hold: the slice CNN (required) and the sequence stage (optional).
FILE_ROLES: tuple[str, ...] = ("cnn", "sequence")
#: Alias of the model ``ichd predict`` uses when none is named.
DEFAULT_ALIAS = "default"
#: Manifest key listing the training data exactly (see the module docstring).
TRAINING_SOURCES_KEY = "training_sources"
#: ``patients`` value meaning every patient of the source.
ALL_PATIENTS = "all"


def _source_key(name: str) -> str:
    """Source names compare without case and punctuation: "CT-ICH", "ct-ich" and "ctich" are one source."""
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def _patient_key(patient: str | int) -> str:
    """Patient ids compare without case; all-digit ids as numbers ("071", "71" and 71 are one patient)."""
    text = str(patient).strip().lower()
    return str(int(text)) if text.isdigit() else text


def bundled_models_dir() -> Path:
    """Folder holding the bundles shipped with the package."""
    return package_resource("resources", "models")


@dataclass(frozen=True)
class BundledModel:
    """A model bundle read from its ``manifest.json`` (see the module docstring)."""

    name: str
    version: str
    root: Path
    manifest: dict[str, Any] = field(repr=False)

    @property
    def files(self) -> dict[str, Path]:
        """Role -> absolute path of each weights file."""
        return {role: self.root / spec["path"] for role, spec in self.manifest["files"].items()}

    @property
    def aliases(self) -> list[str]:
        return list(self.manifest.get("aliases", []))

    @property
    def thresholds(self) -> dict[str, float]:
        """Operating threshold per label (chosen on cross-validation; see the model card)."""
        return {lab: float(self.manifest["thresholds"][lab]) for lab in LABELS}

    @property
    def sha256(self) -> str:
        """One digest naming the weights: the file's sha256, or for several files the sha256 of
        ``"role:digest\\n"`` lines in :data:`FILE_ROLES` order."""
        files = self.manifest["files"]
        if len(files) == 1:
            return str(next(iter(files.values()))["sha256"])
        text = "".join(f"{role}:{files[role]['sha256']}\n" for role in FILE_ROLES if role in files)
        return hashlib.sha256(text.encode("ascii")).hexdigest()

    @property
    def model_card_path(self) -> Path | None:
        name = self.manifest.get("model_card")
        return (self.root / name) if name else None

    @property
    def training_sources(self) -> list[dict[str, Any]] | None:
        """The manifest's ``training_sources`` (exact training data), or None when the bundle does not list it."""
        sources = self.manifest.get(TRAINING_SOURCES_KEY)
        return None if sources is None else [dict(s) for s in sources]

    def trained_on(self, source: str, patient: str | int | None = None) -> bool | None:
        """Whether ``patient`` of data source ``source`` (any patient of it when ``patient`` is None) was in the
        training data: True / False from the manifest's ``training_sources``, None when the manifest does not
        list its training data (then it may or may not have been)."""
        sources = self.training_sources
        if sources is None:
            return None
        for entry in sources:
            if _source_key(entry["source"]) != _source_key(source):
                continue
            patients = entry["patients"]
            if patient is None or patients == ALL_PATIENTS:
                return True
            if _patient_key(patient) in {_patient_key(p) for p in patients}:
                return True
        return False

    def model_card(self) -> str:
        """The model card text (Markdown), or an empty string when the bundle has none."""
        path = self.model_card_path
        return path.read_text(encoding="utf-8") if path is not None and path.is_file() else ""

    def verify(self) -> None:
        """Check that every weights file exists and has the sha256 recorded in the manifest."""
        for role, spec in self.manifest["files"].items():
            path = self.root / spec["path"]
            if not path.is_file():
                raise ModelError(f"model {self.name!r}: weights file {str(path)!r} ({role}) is missing",
                                 hint="reinstall ichd or rebuild the bundle")
            digest = sha256_file(path)
            if digest != spec["sha256"]:
                raise ModelError(
                    f"model {self.name!r}: weights file {str(path)!r} has sha256 {digest[:16]}..., "
                    f"the manifest says {str(spec['sha256'])[:16]}...",
                    hint="the file is corrupt or was replaced; reinstall ichd or rebuild the bundle")

    def info(self) -> dict[str, Any]:
        """Plain description for ``ichd models info`` (no weights are loaded)."""
        m = self.manifest
        return {
            "name": self.name,
            "version": self.version,
            "kind": "bundle",
            "aliases": self.aliases,
            "description": m.get("description", ""),
            "architecture": m.get("architecture", {}),
            "path": str(self.root),
            "files": {role: {"path": spec["path"], "sha256": spec["sha256"], "bytes": spec.get("bytes")}
                      for role, spec in m["files"].items()},
            "sha256": self.sha256,
            "scan_rule": m.get("scan_rule", "max"),
            "thresholds": self.thresholds,
            "threshold_policy": m.get("threshold_policy", {}),
            "metrics": m.get("metrics", {}),
            "training_data": m.get("training_data", ""),
            "training_sources": self.training_sources,
            "license": m.get("license", ""),
            "intended_use": m.get("intended_use", ""),
            "model_card": str(self.model_card_path) if self.model_card_path else None,
        }


def _check_manifest(m: Any, where: str) -> dict[str, Any]:
    if not isinstance(m, dict) or m.get("format") != BUNDLE_FORMAT:
        raise ModelError(f"{where} is not an ichd model bundle manifest (missing \"format\": \"{BUNDLE_FORMAT}\")")
    if int(m.get("format_version", 0)) > BUNDLE_FORMAT_VERSION:
        raise ModelError(f"{where} uses bundle format {m.get('format_version')}, newer than this ichd "
                         f"understands ({BUNDLE_FORMAT_VERSION})", hint="upgrade ichd")
    for key in ("name", "version", "files", "thresholds"):
        if key not in m:
            raise ModelError(f"{where}: manifest key {key!r} is missing")
    files = m["files"]
    if not isinstance(files, dict) or "cnn" not in files:
        raise ModelError(f"{where}: \"files\" must name at least the \"cnn\" weights file")
    for role, spec in files.items():
        if role not in FILE_ROLES:
            raise ModelError(f"{where}: unknown file role {role!r}; {did_you_mean(role, FILE_ROLES)}")
        if not isinstance(spec, dict) or not {"path", "sha256"} <= set(spec):
            raise ModelError(f"{where}: files.{role} needs \"path\" and \"sha256\"")
        if Path(spec["path"]).is_absolute() or ".." in Path(spec["path"]).parts:
            raise ModelError(f"{where}: files.{role}.path must be relative to the bundle folder")
    missing = [lab for lab in LABELS if lab not in m["thresholds"]]
    if missing:
        raise ModelError(f"{where}: thresholds for {missing} are missing")
    _check_training_sources(m.get(TRAINING_SOURCES_KEY), where)
    return m


def _check_training_sources(sources: Any, where: str) -> None:
    """``training_sources`` is absent (None) or a list of {"source": str, "patients": "all" | [ids]}."""
    if sources is None:
        return
    shape = (f'{TRAINING_SOURCES_KEY} must be a list of {{"source": NAME, "patients": "{ALL_PATIENTS}" '
             f'or [patient ids]}}')
    if not isinstance(sources, list):
        raise ModelError(f"{where}: {shape}")
    for entry in sources:
        if not isinstance(entry, dict) or not isinstance(entry.get("source"), str) or not entry["source"].strip():
            raise ModelError(f"{where}: {shape}")
        patients = entry.get("patients")
        ok = patients == ALL_PATIENTS or (
            isinstance(patients, list)
            and all(isinstance(p, (str, int)) and not isinstance(p, bool) and str(p).strip() for p in patients))
        if not ok:
            raise ModelError(f"{where}: {TRAINING_SOURCES_KEY} entry {entry.get('source')!r}: \"patients\" must be "
                             f"\"{ALL_PATIENTS}\" or a list of patient ids")


def read_bundle(path: str | Path) -> BundledModel:
    """Read the bundle in folder ``path`` (or whose ``manifest.json`` is ``path``). Does not verify hashes."""
    path = Path(path)
    manifest_path = path if path.name == MANIFEST_NAME else path / MANIFEST_NAME
    if not manifest_path.is_file():
        raise ModelError(f"{str(path)!r} has no {MANIFEST_NAME}", hint="a model bundle folder holds manifest.json")
    try:
        m = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"cannot read model manifest {str(manifest_path)!r}: {e}") from e
    m = _check_manifest(m, str(manifest_path))
    return BundledModel(name=str(m["name"]), version=str(m["version"]), root=manifest_path.parent.resolve(),
                        manifest=m)


def list_bundled() -> list[BundledModel]:
    """The bundles shipped with the package, sorted by name."""
    root = bundled_models_dir()
    if not root.is_dir():
        return []
    return sorted((read_bundle(d) for d in root.iterdir() if (d / MANIFEST_NAME).is_file()), key=lambda b: b.name)


#: Alias of the bundle that ``default`` stands for when the input is windowed PNG/JPG slices (``--window``): the
#: default model's variant trained on brain-window renderings too (configs/frozen_windowed.yaml).
WINDOWED_ALIAS = "default-windowed"


def model_for_input(model: str, *, windowed: bool) -> str:
    """The model to load for an input: ``"default"`` becomes :data:`WINDOWED_ALIAS` for windowed PNG/JPG slices
    when a bundle with that alias is installed; anything else (and every other input) is returned unchanged."""
    if model != DEFAULT_ALIAS or not windowed:
        return model
    return WINDOWED_ALIAS if any(WINDOWED_ALIAS in b.aliases for b in list_bundled()) else model


def get_bundled(name: str = DEFAULT_ALIAS) -> BundledModel:
    """The shipped bundle called ``name`` or carrying alias ``name`` (e.g. ``"default"``)."""
    bundles = list_bundled()
    for b in bundles:
        if b.name == name or name in b.aliases:
            return b
    known = [b.name for b in bundles] + [a for b in bundles for a in b.aliases]
    if not known:
        raise ModelError(f"no bundled model {name!r}: this installation ships no model bundles",
                         hint="pass a checkpoint or bundle folder with --model PATH")
    raise ModelError(f"no bundled model {name!r}; {did_you_mean(name, known)}",
                     hint="`ichd models list` shows the installed models")


def write_bundle(out_dir: str | Path, *, name: str, version: str, files: Mapping[str, str | Path],
                 thresholds: Mapping[str, float], model_card: str, aliases: tuple[str, ...] = (),
                 extra: Mapping[str, Any] | None = None) -> BundledModel:
    """Make a bundle in ``out_dir``: copy the weights ``files`` ({role: path}), record their sha256, write the
    model card and the manifest (last, atomically, so a half-written bundle has no manifest and is never listed).

    ``extra`` adds manifest keys such as ``description``, ``architecture``, ``scan_rule``, ``threshold_policy``,
    ``metrics``, ``training_data``, ``training_sources``, ``license``, ``intended_use``.
    """
    from ichd.utils.files import atomic_path, atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    specs: dict[str, dict[str, Any]] = {}
    for role, src in files.items():
        if role not in FILE_ROLES:
            raise ModelError(f"unknown file role {role!r}; {did_you_mean(role, FILE_ROLES)}")
        src = Path(src)
        if not src.is_file():
            raise ModelError(f"weights file {str(src)!r} ({role}) not found")
        dest = out / f"{role}.pt"
        if src.resolve() != dest.resolve():
            with atomic_path(dest) as tmp:
                shutil.copyfile(src, tmp)
        specs[role] = {"path": dest.name, "sha256": sha256_file(dest), "bytes": dest.stat().st_size}
    atomic_write_text(out / "model_card.md", model_card)
    manifest = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_FORMAT_VERSION,
        "name": name,
        "version": version,
        "aliases": list(aliases),
        **dict(extra or {}),
        "files": specs,
        "thresholds": {lab: float(thresholds[lab]) for lab in LABELS},
        "model_card": "model_card.md",
    }
    _check_manifest(manifest, str(out / MANIFEST_NAME))
    atomic_write_text(out / MANIFEST_NAME, json.dumps(manifest, indent=2) + "\n")
    return read_bundle(out)
