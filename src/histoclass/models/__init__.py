"""The model registry: `create_model(name)`, `list_models()`; each model in its own module."""
from .registry import create_model, list_models, register_model
from . import seed_cnn, histo_resnet  # noqa: F401,E402 - registers the models

__all__ = ["create_model", "list_models", "register_model"]
