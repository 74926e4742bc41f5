"""Architectures: logistic regression, MLP, small CNN, ResNet-style CNN.

Each builder returns a :class:`~mia_jax.models.base.LayeredModel` whose stage names are
the layers the white-box attack can tap.
"""

from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from mia_jax._validation import MiaInputError, check_in_range, check_positive_int
from mia_jax.models.base import LayeredModel

ACTIVATIONS: dict[str, Callable] = {
    "relu": nn.relu, "tanh": jnp.tanh, "sigmoid": nn.sigmoid, "gelu": nn.gelu,
    "elu": nn.elu, "softplus": nn.softplus,
}


def _activation(name: str) -> Callable:
  if name not in ACTIVATIONS:
    raise MiaInputError(f"activation: expected one of {sorted(ACTIVATIONS)}, got {name!r}")
  return ACTIVATIONS[name]


def _bn_mask(mask, a):
  """Per-example mask [B] -> BatchNorm's mask broadcast to ``a`` (None: all rows real).

  In training, batches padded with zero-weight rows must not enter batch statistics."""
  if mask is None:
    return None
  return jnp.broadcast_to(mask.reshape((-1,) + (1,) * (a.ndim - 1)), a.shape)


def _check_dropout(dropout) -> float:
  return check_in_range(dropout, "dropout", 0.0, 1.0, high_open=True)


class Flatten(nn.Module):
  """Flattens per-example features (keeps the batch axis)."""

  @nn.compact
  def __call__(self, h, train: bool = False, mask=None):
    return h.reshape((h.shape[0], -1))


class Dense(nn.Module):
  """Flatten (if needed) -> Dense -> activation (None: linear) -> dropout."""
  features: int
  activation: str | None = None
  dropout: float = 0.0

  @nn.compact
  def __call__(self, h, train: bool = False, mask=None):
    h = h.reshape((h.shape[0], -1))
    h = nn.Dense(self.features)(h)
    if self.activation is not None:
      h = _activation(self.activation)(h)
    if self.dropout > 0:
      h = nn.Dropout(self.dropout, deterministic=not train)(h)
    return h


class ConvStage(nn.Module):
  """Conv(3x3, SAME) -> activation -> optional 2x2 max-pool."""
  features: int
  activation: str = "relu"
  pool: bool = False

  @nn.compact
  def __call__(self, h, train: bool = False, mask=None):
    h = nn.Conv(self.features, (3, 3), padding="SAME")(h)
    h = _activation(self.activation)(h)
    if self.pool:
      h = nn.max_pool(h, (2, 2), strides=(2, 2))
    return h


class ResStem(nn.Module):
  features: int

  @nn.compact
  def __call__(self, h, train: bool = False, mask=None):
    h = nn.Conv(self.features, (3, 3), padding="SAME", use_bias=False)(h)
    h = nn.BatchNorm(use_running_average=not train, momentum=0.9)(h, mask=_bn_mask(mask, h))
    return nn.relu(h)


class ResBlock(nn.Module):
  """Basic residual block (two 3x3 convs with BatchNorm), optional stride-2 downsample."""
  features: int
  stride: int = 1

  @nn.compact
  def __call__(self, h, train: bool = False, mask=None):
    def bn(a):
      return nn.BatchNorm(use_running_average=not train, momentum=0.9)(a, mask=_bn_mask(mask, a))
    r = nn.Conv(self.features, (3, 3), strides=self.stride, padding="SAME", use_bias=False)(h)
    r = nn.relu(bn(r))
    r = nn.Conv(self.features, (3, 3), padding="SAME", use_bias=False)(r)
    r = bn(r)
    if self.stride != 1 or h.shape[-1] != self.features:
      h = nn.Conv(self.features, (1, 1), strides=self.stride, use_bias=False)(h)
      h = bn(h)
    return nn.relu(h + r)


class GlobalAvgPool(nn.Module):
  @nn.compact
  def __call__(self, h, train: bool = False, mask=None):
    return jnp.mean(h, axis=(1, 2))


def logistic(*, input_shape: Sequence[int], num_classes: int) -> LayeredModel:
  """Multinomial logistic regression: the single stage is the linear logits layer."""
  return LayeredModel(
      name="logistic", stages=(("logits", Dense(num_classes)),),
      input_shape=tuple(input_shape), num_classes=num_classes,
      spec=dict(name="logistic"))


def mlp(*, input_shape: Sequence[int], num_classes: int, widths: Sequence[int] = (256, 256),
        activation: str = "relu", dropout: float = 0.0) -> LayeredModel:
  """MLP; hidden layers are named ``dense_0``, ``dense_1``, ... (post-activation)."""
  _activation(activation)
  _check_dropout(dropout)
  widths = tuple(check_positive_int(w, "widths") for w in widths)
  stages = tuple((f"dense_{i}", Dense(w, activation, dropout)) for i, w in enumerate(widths))
  stages += (("logits", Dense(num_classes)),)
  return LayeredModel(
      name="mlp", stages=stages, input_shape=tuple(input_shape), num_classes=num_classes,
      spec=dict(name="mlp", widths=list(widths), activation=activation, dropout=dropout))


def small_cnn(*, input_shape: Sequence[int], num_classes: int, channels: Sequence[int] = (32, 64),
              hidden: int = 128, activation: str = "relu", dropout: float = 0.0) -> LayeredModel:
  """conv32 - conv64 - maxpool - fc128 - logits (for 28x28 or 62x47 grayscale).

  Layers: ``conv_0``, ``conv_1`` (pooled), ``fc``, ``logits``.
  """
  if len(input_shape) != 3:
    raise MiaInputError(
        f"input_shape: small_cnn expects images [H, W, C], got {tuple(input_shape)}")
  _activation(activation)
  _check_dropout(dropout)
  check_positive_int(hidden, "hidden")
  chans = tuple(check_positive_int(c, "channels") for c in channels)
  if not chans:
    raise MiaInputError("channels: expected at least one convolution width")
  stages = tuple(
      (f"conv_{i}", ConvStage(c, activation, pool=(i == len(chans) - 1)))
      for i, c in enumerate(chans))
  stages += (("fc", Dense(hidden, activation, dropout)), ("logits", Dense(num_classes)))
  return LayeredModel(
      name="small_cnn", stages=stages, input_shape=tuple(input_shape),
      num_classes=num_classes,
      spec=dict(name="small_cnn", channels=list(chans), hidden=hidden,
                activation=activation, dropout=dropout))


def resnet(*, input_shape: Sequence[int], num_classes: int,
           widths: Sequence[int] = (16, 32, 64)) -> LayeredModel:
  """ResNet-style CNN for 32x32x3: stem, one residual block per width (stride 2 after
  the first), global average pool, logits. Uses BatchNorm (eval mode at inference).

  Layers: ``stem``, ``block_0``, ``block_1``, ..., ``pool``, ``logits``.
  """
  if len(input_shape) != 3:
    raise MiaInputError(f"input_shape: resnet expects images [H, W, C], got {tuple(input_shape)}")
  widths = tuple(check_positive_int(w, "widths") for w in widths)
  if not widths:
    raise MiaInputError("widths: resnet expects at least one block width")
  stages = (("stem", ResStem(widths[0])),)
  stages += tuple(
      (f"block_{i}", ResBlock(w, stride=1 if i == 0 else 2)) for i, w in enumerate(widths))
  stages += (("pool", GlobalAvgPool()), ("logits", Dense(num_classes)))
  return LayeredModel(
      name="resnet", stages=stages, input_shape=tuple(input_shape), num_classes=num_classes,
      spec=dict(name="resnet", widths=list(widths)))


MODELS: dict[str, Callable[..., LayeredModel]] = {
    "logistic": logistic, "mlp": mlp, "small_cnn": small_cnn, "resnet": resnet,
}


def make_model(name: str, *, input_shape: Sequence[int], num_classes: int, **options) -> LayeredModel:
  """Builds a model by name (``logistic``, ``mlp``, ``small_cnn``, ``resnet``)."""
  if name not in MODELS:
    raise MiaInputError(f"model: unknown model {name!r}; expected one of {sorted(MODELS)}")
  check_positive_int(num_classes, "num_classes", minimum=2)
  input_shape = tuple(input_shape)
  if not input_shape or any(not isinstance(d, (int, np.integer)) or d < 1 for d in input_shape):
    raise MiaInputError(f"input_shape: expected positive integer dimensions, got {input_shape}")
  # The same architecture is the same (immutable) object, so every compiled function
  # cached per model (training steps, signal passes, Jacobians) is reused by later runs
  # in the same process -- an experiment script auditing many targets compiles once.
  key = _cache_key(name, input_shape, num_classes, options)
  if key is not None and key in _BUILT:
    return _BUILT[key]
  try:
    model = MODELS[name](input_shape=tuple(input_shape), num_classes=num_classes, **options)
  except TypeError as e:
    raise MiaInputError(f"model options for {name!r}: {e}") from e
  if key is not None:
    _BUILT[key] = model
  return model


_BUILT: dict[str, LayeredModel] = {}


def _cache_key(name, input_shape, num_classes, options) -> str | None:
  """A canonical text of the build arguments, or None when an option is not plain data."""
  import json
  try:
    return json.dumps([name, [int(d) for d in input_shape], int(num_classes), options],
                      sort_keys=True, default=_plain)
  except TypeError:
    return None


def _plain(value):
  if isinstance(value, (tuple, list)):
    return list(value)
  if isinstance(value, np.integer):
    return int(value)
  if isinstance(value, np.floating):
    return float(value)
  raise TypeError(f"not plain data: {value!r}")
