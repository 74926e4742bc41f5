"""Models every attack reads through one interface (see :mod:`mia_jax.models.adapters`):
the user's own Flax linen / NNX model or apply function through the adapters, and the
built-in zoo of chains of named stages (:mod:`mia_jax.models.base`)."""

from mia_jax.models.adapters import (TappedModel, from_apply, from_linen, from_nnx,
                                     nnx_variables)
from mia_jax.models.architectures import MODELS, logistic, make_model, mlp, resnet, small_cnn
from mia_jax.models.base import (INPUT, LayeredModel, Variables, num_stacked, stack_variables,
                                 unstack_variables)

__all__ = [
    "INPUT", "LayeredModel", "MODELS", "TappedModel", "Variables", "from_apply", "from_linen",
    "from_nnx", "logistic", "make_model", "mlp", "nnx_variables", "num_stacked", "resnet",
    "small_cnn", "stack_variables", "unstack_variables",
]
