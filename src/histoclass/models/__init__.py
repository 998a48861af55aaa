"""The models: a registry (`create_model(name)`, `list_models()`), each network in its own module,
the augmentation layers that are part of every saved model, and batch-norm folding for inference."""
from .registry import create_model, list_models, register_model, resolve_model_name
from . import original_cnn, histo_resnet  # noqa: F401,E402 - registers the models

__all__ = ["create_model", "list_models", "register_model", "resolve_model_name"]
