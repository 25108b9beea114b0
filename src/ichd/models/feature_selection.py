"""Feature selection between the slice CNN and the sequence model (Burduja et al. 2020, section 3.2).

The seed reduces the CNN's penultimate-layer embedding (2048-d for ResNeXt-101) to 120 or 192 values per slice
before the BiLSTM. :class:`FeatureSelector` implements every variant of its Table 2:

``pca``
    project onto the first ``k`` principal components of the training embeddings.
``top_std``
    keep the ``k`` embedding dimensions with the largest standard deviation over the training embeddings.
``weight_largest`` / ``weight_smallest``
    rank the dimensions by the magnitude of the CNN's final-layer (classifier) weights, *for each output class*,
    and keep the ``k`` with the largest (or smallest) ``|w|``, taking the classes in turn (rank 1 of every class,
    then rank 2, ...) so that every class contributes equally.
``none``
    keep every dimension.

Optionally (``standardize``) the selected values are z-scored with the training mean / std, so that every
variant reaches the sequence model on the same scale.

A selector is *fitted on training data only* and then travels with the sequence model: :meth:`state_dict`
holds plain tensors and scalars (no pickled objects), so a checkpoint loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ichd.errors import ConfigError, InputError, ModelError, did_you_mean

SelectionMethod = Literal["none", "pca", "top_std", "weight_largest", "weight_smallest"]
#: Every selection method, in the order of the seed's Table 2 discussion.
SELECTION_METHODS: tuple[str, ...] = ("none", "pca", "top_std", "weight_largest", "weight_smallest")
#: Methods that need the CNN's classifier weights at fit time.
WEIGHT_METHODS: tuple[str, ...] = ("weight_largest", "weight_smallest")

_STATE_VERSION = 1


@dataclass
class SelectorConfig:
    """How to reduce CNN embeddings before the sequence model.

    Attributes:
        method: one of :data:`SELECTION_METHODS`.
        k: number of output features (ignored for ``none``).
        standardize: z-score the selected features with the training mean / std.
    """

    method: SelectionMethod = "pca"
    k: int = 120
    standardize: bool = True

    def __post_init__(self) -> None:
        if self.method not in SELECTION_METHODS:
            raise ConfigError(f"feature selection method {self.method!r} is unknown; "
                              f"{did_you_mean(str(self.method), SELECTION_METHODS)}")
        if self.method != "none" and self.k < 1:
            raise ConfigError(f"feature selection k must be >= 1, got {self.k}")


def _as_matrix(x: Any, what: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise InputError(f"{what} must be a 2-D array (n_slices, n_features), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise InputError(f"{what} contains NaN or infinite values", hint="re-run `ichd embed` on a clean cache")
    return arr


def rank_by_class_weights(weight: np.ndarray, k: int, *, largest: bool) -> np.ndarray:
    """Indices of ``k`` features ranked by ``|weight|`` per class, classes taken in turn.

    ``weight`` is the classifier matrix (n_classes, n_features). For each class the features are sorted by
    ``|w|`` (descending for ``largest``, ascending otherwise; ties broken by index); the result takes rank 0
    of class 0, rank 0 of class 1, ..., then rank 1 of every class, skipping features already taken, until
    ``k`` are chosen. Returned in ascending index order.
    """
    w = np.abs(np.asarray(weight, dtype=np.float64))
    if w.ndim != 2:
        raise ModelError(f"classifier weight must be 2-D (classes, features), got shape {w.shape}")
    n_classes, n_features = w.shape
    if not 1 <= k <= n_features:
        raise ConfigError(f"cannot select {k} of {n_features} features by weight magnitude",
                          hint=f"choose k between 1 and {n_features}")
    keys = -w if largest else w
    order = np.argsort(keys, axis=1, kind="stable")  # (classes, features)
    chosen: list[int] = []
    taken = np.zeros(n_features, dtype=bool)
    for rank in range(n_features):
        for c in range(n_classes):
            j = int(order[c, rank])
            if not taken[j]:
                taken[j] = True
                chosen.append(j)
                if len(chosen) == k:
                    return np.sort(np.asarray(chosen, dtype=np.int64))
    return np.sort(np.asarray(chosen, dtype=np.int64))  # pragma: no cover - k <= n_features always returns above


class FeatureSelector:
    """Fit-on-train / transform feature selector; see the module docstring for the methods."""

    def __init__(self, config: SelectorConfig | None = None) -> None:
        self.config = config or SelectorConfig()
        self.in_features: int | None = None
        self.indices: np.ndarray | None = None  # top_std / weight_*: kept input dimensions
        self.pca_mean: np.ndarray | None = None  # pca: (in_features,)
        self.pca_components: np.ndarray | None = None  # pca: (k, in_features)
        self.out_mean: np.ndarray | None = None  # standardize: (out_features,)
        self.out_std: np.ndarray | None = None

    # ------------------------------------------------------------------ fitting
    @property
    def fitted(self) -> bool:
        return self.in_features is not None

    @property
    def out_features(self) -> int:
        """Number of features :meth:`transform` returns."""
        self._check_fitted()
        if self.config.method == "none":
            return int(self.in_features)  # type: ignore[arg-type]
        if self.config.method == "pca":
            return int(self.pca_components.shape[0])  # type: ignore[union-attr]
        return int(self.indices.shape[0])  # type: ignore[union-attr]

    def fit(self, x: Any, *, head_weight: Any | None = None) -> FeatureSelector:
        """Fit on training embeddings ``x`` (n_slices, n_features).

        ``head_weight`` (n_classes, n_features) is the CNN's classifier weight; required for the
        ``weight_*`` methods (use the CNN whose training patients are the selector's training patients).
        """
        cfg = self.config
        x = _as_matrix(x, "embeddings")
        n, d = x.shape
        if n < 2:
            raise InputError(f"feature selection needs at least 2 training slices, got {n}")
        if cfg.method != "none" and cfg.k > d:
            raise ConfigError(f"cannot select k={cfg.k} features from {d}-dimensional embeddings",
                              hint=f"set selector.k <= {d}")
        self.in_features = d
        self.indices = self.pca_mean = self.pca_components = None
        if cfg.method == "pca":
            if cfg.k > n:
                raise ConfigError(f"PCA to k={cfg.k} needs at least {cfg.k} training slices, got {n}")
            mean = x.mean(axis=0)
            _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
            comps = vt[: cfg.k]
            # Deterministic sign: the largest-magnitude loading of each component is positive.
            signs = np.sign(comps[np.arange(comps.shape[0]), np.abs(comps).argmax(axis=1)])
            signs[signs == 0] = 1.0
            self.pca_mean, self.pca_components = mean, comps * signs[:, None]
        elif cfg.method == "top_std":
            std = x.std(axis=0)
            order = np.argsort(-std, kind="stable")
            self.indices = np.sort(order[: cfg.k]).astype(np.int64)
        elif cfg.method in WEIGHT_METHODS:
            if head_weight is None:
                raise ModelError(f"feature selection {cfg.method!r} needs the CNN's classifier weights",
                                 hint="embed with `ichd embed`, which stores them beside the embeddings")
            w = np.asarray(head_weight, dtype=np.float64)
            if w.ndim != 2 or w.shape[1] != d:
                raise ModelError(f"classifier weight shape {w.shape} does not match {d}-dimensional embeddings")
            self.indices = rank_by_class_weights(w, cfg.k, largest=cfg.method == "weight_largest")
        self.out_mean = self.out_std = None
        if cfg.standardize:
            z = self._project(x)
            std = z.std(axis=0)
            self.out_mean, self.out_std = z.mean(axis=0), np.where(std > 1e-8, std, 1.0)
        return self

    # ------------------------------------------------------------------ transform
    def _check_fitted(self) -> None:
        if self.in_features is None:
            raise ModelError("feature selector is not fitted", hint="call fit() on training embeddings first")

    def _project(self, x: np.ndarray) -> np.ndarray:
        method = self.config.method
        if method == "pca":
            return (x - self.pca_mean) @ self.pca_components.T  # type: ignore[operator,union-attr]
        if method == "none":
            return x
        return x[:, self.indices]

    def transform(self, x: Any) -> np.ndarray:
        """Selected (and optionally standardised) features, float32 (n_slices, out_features)."""
        self._check_fitted()
        x = _as_matrix(x, "embeddings")
        if x.shape[1] != self.in_features:
            raise ModelError(f"embeddings have {x.shape[1]} features but the selector was fitted on "
                             f"{self.in_features}", hint="use embeddings from the CNN this model was trained with")
        z = self._project(x)
        if self.out_mean is not None:
            z = (z - self.out_mean) / self.out_std
        return z.astype(np.float32)

    def fit_transform(self, x: Any, *, head_weight: Any | None = None) -> np.ndarray:
        return self.fit(x, head_weight=head_weight).transform(x)

    # ------------------------------------------------------------------ serialisation
    def state_dict(self) -> dict[str, Any]:
        """Plain tensors and scalars (loadable with ``torch.load(weights_only=True)``)."""
        import torch

        self._check_fitted()

        def t(a: np.ndarray | None) -> Any:
            return None if a is None else torch.from_numpy(np.ascontiguousarray(a))

        return {
            "version": _STATE_VERSION,
            "method": self.config.method,
            "k": int(self.config.k),
            "standardize": bool(self.config.standardize),
            "in_features": int(self.in_features),  # type: ignore[arg-type]
            "indices": t(self.indices),
            "pca_mean": t(self.pca_mean),
            "pca_components": t(self.pca_components),
            "out_mean": t(self.out_mean),
            "out_std": t(self.out_std),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> FeatureSelector:
        """Rebuild a fitted selector from :meth:`state_dict`; a malformed state raises :class:`ModelError`."""
        try:
            if int(state["version"]) != _STATE_VERSION:
                raise ModelError(f"feature selector state version {state['version']} is not supported "
                                 f"(this ichd reads version {_STATE_VERSION})")
            sel = cls(SelectorConfig(method=state["method"], k=int(state["k"]),
                                     standardize=bool(state["standardize"])))

            def a(key: str) -> np.ndarray | None:
                v = state.get(key)
                return None if v is None else np.asarray(v.numpy() if hasattr(v, "numpy") else v)

            sel.in_features = int(state["in_features"])
            sel.indices, sel.pca_mean, sel.pca_components = a("indices"), a("pca_mean"), a("pca_components")
            sel.out_mean, sel.out_std = a("out_mean"), a("out_std")
        except (KeyError, TypeError, ValueError, ConfigError) as e:
            raise ModelError(f"feature selector state in the checkpoint is malformed: {e}") from e
        method = sel.config.method
        if (method == "pca" and sel.pca_components is None) or (
                method in ("top_std", *WEIGHT_METHODS) and sel.indices is None):
            raise ModelError(f"feature selector state for {method!r} is missing its arrays")
        return sel

    def describe(self) -> str:
        """Short human-readable description (e.g. ``pca120`` or ``top_std192``)."""
        m = self.config.method
        return "none" if m == "none" else f"{m}{self.config.k}"
