"""Flax models exposed as chains of named layers (see :mod:`mia_jax.models.base`)."""

from mia_jax.models.architectures import MODELS, logistic, make_model, mlp, resnet, small_cnn
from mia_jax.models.base import (INPUT, LayeredModel, Variables, num_stacked, stack_variables,
                                 unstack_variables)

__all__ = [
    "INPUT", "LayeredModel", "MODELS", "Variables", "logistic", "make_model", "mlp",
    "num_stacked", "resnet", "small_cnn", "stack_variables", "unstack_variables",
]
