"""Models: the registry of slice CNNs (and other model families), and checkpoints.

``create_model(name, pretrained=False, num_classes=6, weights=None, **kwargs)`` builds a registered model;
``list_models()`` / ``model_info(name)`` describe them; :mod:`ichd.models.checkpoint` saves and loads
weights together with their config, label order and preprocessing. Importing this package does not import
torch; the model modules load on first use.
"""

from ichd.models.registry import create_model, list_models, model_info, model_spec, register_model

__all__ = ["create_model", "list_models", "model_info", "model_spec", "register_model"]
