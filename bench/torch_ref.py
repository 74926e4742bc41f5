"""The white-box signal pass in PyTorch, with the same architecture and the same weights.

A :class:`TorchLayered` is built from a mia_jax ``LayeredModel`` and its variables (Flax
kernels are transposed to PyTorch layouts; images are NCHW inside, NHWC at the edges), so
its rows can be checked against JAX's. Two implementations per computation:

* eager: one ``torch.autograd.grad`` of the summed (centered) true-class logits with
  respect to the retained activations of every tapped layer (and one per layer for the
  proxy's upper part);
* functional: ``torch.func.grad`` with respect to zero perturbations added at every tapped
  layer (the formulation JAX uses), which ``torch.compile`` can trace.

Imported only when torch is installed; :func:`available` says whether it is.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np


def available() -> tuple[Any, str]:
  """(torch module or None, a note)."""
  try:
    import torch
  except ImportError as e:
    return None, f"torch not importable ({e}); PyTorch comparison skipped"
  return torch, f"torch {torch.__version__}"


def _act(torch, name: str | None) -> Callable:
  F = torch.nn.functional
  table = {
      None: lambda h: h, "relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
      "gelu": lambda h: F.gelu(h, approximate="tanh"), "elu": F.elu, "softplus": F.softplus,
  }
  if name not in table:
    raise NotImplementedError(f"activation {name!r}")
  return table[name]


def _flat(h):
  """Flatten per example in NHWC order (as the Flax model does)."""
  if h.ndim == 4:
    h = h.permute(0, 2, 3, 1)
  return h.reshape(h.shape[0], -1)


class TorchLayered:
  """PyTorch twin of a mia_jax LayeredModel (eval mode) with copied weights."""

  def __init__(self, model, variables, device: str = "cpu"):
    import torch
    from mia_jax.models import architectures as arch
    self.torch = torch
    self.device = device
    self.layer_names = tuple(model.layer_names)
    self.stage_names = tuple(model.stage_names)
    F = torch.nn.functional

    def t(a):
      return torch.as_tensor(np.array(a, np.float32, order="C", copy=True), device=device)

    def conv_w(k):  # Flax [kh, kw, in, out] -> PyTorch [out, in, kh, kw]
      return t(np.transpose(np.asarray(k), (3, 2, 0, 1)))

    def conv_same(h, w, b, stride):
      # XLA "SAME": out = ceil(in / s), padding split low = total // 2, high = rest.
      kh, kw = w.shape[2], w.shape[3]
      pads = []
      for size, k in ((h.shape[3], kw), (h.shape[2], kh)):
        out = -(-size // stride)
        total = max((out - 1) * stride + k - size, 0)
        pads += [total // 2, total - total // 2]
      if any(pads):
        h = F.pad(h, pads)
      return F.conv2d(h, w, b, stride=stride)

    def bn_params(p, s):  # converted once, at build time
      return {k: {"mean": t(s[k]["mean"]), "var": t(s[k]["var"]), "scale": t(p[k]["scale"]),
                  "bias": t(p[k]["bias"])} for k in p if k.startswith("BatchNorm_")}

    def bn(h, b):
      return F.batch_norm(h, b["mean"], b["var"], b["scale"], b["bias"], training=False,
                          eps=1e-5)

    params = variables["params"]
    stats = variables.get("batch_stats", {})
    stages = []
    for name, module in model.stages:
      p = params.get(name, {})
      s = stats.get(name, {})
      if isinstance(module, arch.Dense):
        w, b = t(np.asarray(p["Dense_0"]["kernel"]).T), t(p["Dense_0"]["bias"])
        act = _act(torch, module.activation)
        f = (lambda w, b, act: lambda h: act(F.linear(_flat(h), w, b)))(w, b, act)
      elif isinstance(module, arch.Flatten):
        f = _flat
      elif isinstance(module, arch.ConvStage):
        w, b = conv_w(p["Conv_0"]["kernel"]), t(p["Conv_0"]["bias"])
        act, pool = _act(torch, module.activation), module.pool

        def f(h, w=w, b=b, act=act, pool=pool):
          h = act(conv_same(h, w, b, 1))
          return F.max_pool2d(h, 2, 2) if pool else h
      elif isinstance(module, arch.ResStem):
        w, bns = conv_w(p["Conv_0"]["kernel"]), bn_params(p, s)
        f = (lambda w, b: lambda h: torch.relu(bn(conv_same(h, w, None, 1), b)))(w, bns["BatchNorm_0"])
      elif isinstance(module, arch.ResBlock):
        ws = {k: conv_w(v["kernel"]) for k, v in p.items() if k.startswith("Conv_")}
        bns, stride = bn_params(p, s), module.stride

        def f(h, ws=ws, bns=bns, stride=stride):
          r = torch.relu(bn(conv_same(h, ws["Conv_0"], None, stride), bns["BatchNorm_0"]))
          r = bn(conv_same(r, ws["Conv_1"], None, 1), bns["BatchNorm_1"])
          if "Conv_2" in ws:
            h = bn(conv_same(h, ws["Conv_2"], None, stride), bns["BatchNorm_2"])
          return torch.relu(h + r)
      elif isinstance(module, arch.GlobalAvgPool):
        f = lambda h: h.mean(dim=(2, 3))  # noqa: E731
      else:
        raise NotImplementedError(f"stage {name!r}: {type(module).__name__}")
      stages.append((name, f))
    self.stages = tuple(stages)

  # -- layouts ---------------------------------------------------------------------------
  def to_torch(self, a: np.ndarray):
    """NHWC host array -> NCHW device tensor (other ranks unchanged)."""
    a = np.asarray(a)
    if a.ndim == 4:
      a = np.transpose(a, (0, 3, 1, 2))
    return self.torch.as_tensor(np.ascontiguousarray(a), device=self.device)

  @staticmethod
  def to_numpy(t) -> np.ndarray:
    """Device tensor (NCHW) -> NHWC host array."""
    a = t.detach().float().cpu().numpy()
    return np.transpose(a, (0, 2, 3, 1)) if a.ndim == 4 else a

  # -- forward ---------------------------------------------------------------------------
  def _index(self, layer: str) -> int:
    return 0 if layer == "input" else self.stage_names.index(layer) + 1

  def features(self, x):
    """(logits, {layer: activation}) with "input" -> x."""
    feats = {"input": x}
    h = x
    for name, f in self.stages:
      h = f(h)
      feats[name] = h
    return h, feats

  def forward_perturbed(self, x, perts):
    h = x + perts["input"] if "input" in perts else x
    for name, f in self.stages:
      h = f(h)
      if name in perts:
        h = h + perts[name]
    return h

  def g(self, h, layer: str):
    for _, f in self.stages[self._index(layer):]:
      h = f(h)
    return h

  def layer_shapes(self, x) -> dict[str, tuple[int, ...]]:
    with self.torch.no_grad():
      _, feats = self.features(x[:1])
    return {k: tuple(v.shape[1:]) for k, v in feats.items()}


def _cotangent(torch, logits, y, centered: bool):
  k = logits.shape[-1]
  cot = torch.nn.functional.one_hot(y.long(), k).to(logits.dtype)
  return cot - 1.0 / k if centered else cot


# -- eager autograd -------------------------------------------------------------------------

def rows_autograd(tm: TorchLayered, x, y, layers: Sequence[str], centered: bool = False):
  """{layer: d z_y / d h_layer} for the batch, from one backward pass."""
  torch = tm.torch
  x = x.detach().requires_grad_(True)
  logits, feats = tm.features(x)
  obj = (logits * _cotangent(torch, logits, y, centered)).sum()
  grads = torch.autograd.grad(obj, [feats[l] for l in layers])
  return dict(zip(layers, grads))


def scores_autograd(tm: TorchLayered, proxy: TorchLayered, means, x, y, layers: Sequence[str]):
  """Per-layer Stolen Memories scores (centered rows, one proxy), as mia_jax computes."""
  torch = tm.torch
  x = x.detach().requires_grad_(True)
  logits, feats = tm.features(x)
  cot = _cotangent(torch, logits, y, True)
  rows_t = torch.autograd.grad((logits * cot).sum(), [feats[l] for l in layers])
  out = {}
  for l, rt in zip(layers, rows_t):
    h = feats[l].detach().requires_grad_(True)
    rp, = torch.autograd.grad((proxy.g(h, l) * cot).sum(), [h])
    d = (h.detach() - means[l][y.long()]) * (rt - rp)
    out[l] = d.flatten(1).sum(1)
  return out


# -- functional (torch.func; compilable) ------------------------------------------------------

def rows_func(tm: TorchLayered, shapes: dict, layers: Sequence[str], centered: bool = False):
  """A function (x, y) -> {layer: rows} via torch.func.grad w.r.t. zero perturbations."""
  torch = tm.torch

  def fn(x, y):
    zeros = {l: torch.zeros((x.shape[0],) + shapes[l], device=x.device, dtype=x.dtype)
             for l in layers}

    def obj(perts):
      logits = tm.forward_perturbed(x, perts)
      return (logits * _cotangent(torch, logits, y, centered)).sum()

    return torch.func.grad(obj)(zeros)

  return fn


def scores_func(tm: TorchLayered, proxy: TorchLayered, means, shapes: dict,
                layers: Sequence[str]):
  torch = tm.torch
  rows = rows_func(tm, shapes, layers, centered=True)

  def fn(x, y):
    _, feats = tm.features(x)
    rows_t = rows(x, y)
    out = {}
    for l in layers:
      def obj(h, l=l):
        logits = proxy.g(h, l)
        return (logits * _cotangent(torch, logits, y, True)).sum()
      rp = torch.func.grad(obj)(feats[l])
      d = (feats[l] - means[l][y.long()]) * (rows_t[l] - rp)
      out[l] = d.flatten(1).sum(1)
    return out

  return fn
