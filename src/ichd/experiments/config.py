"""Typed experiment configurations (``configs/experiments/NAME.yaml``) and their resolution into the training
configs of the one trainer.

An experiment file holds what ``ichd experiments list`` shows (name, method, paper, what runs, initialisation,
notes), the paper's own published numbers, and the configuration:

* ``kind: cnn``: ``cnn`` holds overrides (a nested mapping) of the base slice-CNN config ``base`` (a
  :class:`~ichd.training.config.CnnTrainConfig` YAML, path relative to the experiment file; by default the default
  model's ``configs/cnn_multi_256.yaml``: its data, patient folds and augmentation); ``sequence`` (optional) holds
  overrides of the base sequence config ``seq_base`` (:class:`~ichd.training.seq.SeqTrainConfig`), trained on the
  CNN folds' out-of-fold embeddings;
* ``kind: pca_baseline``: ``baseline`` (:class:`BaselineConfig`) on the data of the (resolved) ``cnn`` config.

``profiles`` maps a profile name (``cpu``: the CPU-feasible settings of the comparison run) to overrides of the
experiment itself, applied by ``--profile``; ``--set KEY=VALUE`` overrides any dotted key afterwards. Both are
recorded in the run's ``experiment.yaml``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from ichd.errors import ConfigError, did_you_mean

if TYPE_CHECKING:
    from ichd.training.config import CnnTrainConfig
    from ichd.training.seq import SeqTrainConfig


@dataclass
class PublishedNumber:
    """One number a paper reports for its own method, on its own data (never comparable one-to-one)."""

    metric: str  # e.g. "weighted log loss, CNN alone"
    value: str  # as printed, e.g. "0.07212" or "87.71 %"
    where: str  # e.g. "Table 2"
    data: str = ""  # the paper's evaluation data, e.g. "RSNA 2019 stage-2 test set"


@dataclass
class BaselineConfig:
    """PCA on the raw pixels of the three windows + a classifier of "any" (the LRCN paper's baselines)."""

    classifier: Literal["logreg", "random_forest"] = "logreg"
    components: int = 200
    image_size: int = 128  # the cached slices are resized (area) to this side before flattening
    n_estimators: int = 100  # random forest
    max_iter: int = 1000  # logistic regression
    seed: int = 0

    def __post_init__(self) -> None:
        if self.components < 1 or self.image_size < 8 or self.n_estimators < 1 or self.max_iter < 1:
            raise ConfigError("baseline needs components >= 1, image_size >= 8, n_estimators >= 1, max_iter >= 1")


@dataclass
class EvaluationConfig:
    """How the out-of-fold predictions are evaluated (``ichd evaluate``'s options)."""

    bootstrap: int = 1000  # patient-bootstrap replicates of the 95% intervals
    sensitivity: float = 0.95  # target of the fixed-sensitivity operating point
    seed: int = 0
    clinical_table: bool = False  # also write Danilov et al.'s per-subtype table (scan level)

    def __post_init__(self) -> None:
        if self.bootstrap < 0 or not 0.0 < self.sensitivity <= 1.0:
            raise ConfigError("evaluation needs bootstrap >= 0 and sensitivity in (0, 1]")


@dataclass
class ExperimentConfig:
    """One row of the method comparison (see the module docstring)."""

    name: str
    method: str
    paper: str
    kind: Literal["cnn", "pca_baseline"] = "cnn"
    runs: str = ""  # what runs, in one line
    init: str = ""  # where the initial weights come from (ImageNet, random, a user file)
    notes: list[str] = field(default_factory=list)
    paper_file: str = ""  # the paper's text under ../shared/papers/
    base: str = "../cnn_multi_256.yaml"
    cnn: dict[str, Any] = field(default_factory=dict)
    seq_base: str = "../seq_multi_256.yaml"
    sequence: dict[str, Any] | None = None
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    published: list[PublishedNumber] = field(default_factory=list)
    folds: list[int] | None = None  # CV folds to run (None: all)
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    profile: str | None = None  # the profile applied when loading (recorded)
    overrides: dict[str, Any] = field(default_factory=dict)  # --set overrides applied when loading (recorded)
    source_file: str = ""  # the YAML file it came from (relative bases resolve from its folder)

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"experiment name {self.name!r} must be letters, digits, '_' or '-'")
        if self.kind == "pca_baseline" and self.sequence is not None:
            raise ConfigError(f"experiment {self.name}: a pca_baseline has no sequence stage")

    @property
    def folder(self) -> Path:
        """The folder relative base paths are taken from."""
        return Path(self.source_file).parent if self.source_file else Path(".")

    def cnn_config(self) -> CnnTrainConfig:
        """The slice-CNN config: ``base`` with the ``cnn`` overrides merged in (validated)."""
        from ichd.config import config_from_dict
        from ichd.training.config import CnnTrainConfig

        merged = deep_merge(_read_yaml(self.folder / self.base, f"{self.name}: base"), self.cnn)
        return config_from_dict(CnnTrainConfig, merged, where=f"{self.name}.cnn")

    def seq_config(self) -> SeqTrainConfig | None:
        """The sequence-stage config (``seq_base`` + ``sequence`` overrides), or ``None`` without that stage."""
        if self.sequence is None:
            return None
        from ichd.config import config_from_dict
        from ichd.training.seq import SeqTrainConfig

        merged = deep_merge(_read_yaml(self.folder / self.seq_base, f"{self.name}: seq_base"), self.sequence)
        return config_from_dict(SeqTrainConfig, merged, where=f"{self.name}.sequence")

    def validate(self) -> None:
        """Resolve every stage's config once, so a broken file fails when loaded, not hours into a run."""
        self.cnn_config()
        self.seq_config()


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` merged in: nested mappings merge key by key, anything else is replaced."""
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """``data["a"]["b"] = value`` for ``dotted == "a.b"`` (missing levels are created)."""
    node = data
    *parents, last = dotted.split(".")
    for p in parents:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: {p!r} is not a mapping in the experiment")
        node = child
    node[last] = value


def _read_yaml(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{what}: file {str(path)!r} not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{what}: {str(path)!r} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{what}: {str(path)!r} must hold a mapping at the top level")
    return data


def load_experiment(path: str | Path, *, profile: str | None = None,
                    overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Load and validate an experiment file, with ``profile`` (a key of its ``profiles``) and dotted
    ``overrides`` applied in that order."""
    from ichd.config import config_from_dict

    path = Path(path)
    raw = _read_yaml(path, "experiment")
    if profile is not None:
        profiles = raw.get("profiles") or {}
        if profile not in profiles:
            raise ConfigError(f"experiment {raw.get('name', path.stem)!r} has no profile {profile!r}; "
                              f"{did_you_mean(profile, profiles) if profiles else 'it defines none'}")
        raw = deep_merge(raw, profiles[profile])
    for dotted, value in (overrides or {}).items():
        set_dotted(raw, dotted, value)
    raw["profile"] = profile
    raw["overrides"] = dict(overrides or {})
    raw["source_file"] = str(path)
    exp = config_from_dict(ExperimentConfig, raw, where=path.name)
    if exp.name != path.stem:
        raise ConfigError(f"{path}: name {exp.name!r} differs from the file name", hint=f"name it {path.stem!r}")
    exp.validate()
    return exp
