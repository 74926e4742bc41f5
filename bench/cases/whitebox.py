"""Case (a): the white-box signal pass of Stolen Memories.

For each model (MLP 784-1024-1024-10; small CNN conv32-conv64-pool-fc128-fc10 on
28x28x1; ResNet on 32x32x3) and every tapped layer (``whitebox.default_layers``):

* ``rows``: ``whitebox.jacobian_rows`` -- per-example Jacobian rows of the true-class
  logit for every layer of the target, one backward pass per microbatch;
* ``scores``: ``whitebox.layer_scores`` with a 1-proxy stack -- target rows for all
  layers in one backward pass, one proxy backward per layer, and the linear scores.
* ``gradients``: ``mia_jax.attacks.nasr.attack_features`` -- the Nasr et al. attack's
  inputs: per-example loss gradients of the last stage's parameters (vmapped
  ``jax.grad``), probabilities, loss and label (no PyTorch row for this variant).

Implementations timed side by side, all on the same N examples:

* ``jax-library``: the public function, end to end (host NumPy in, host NumPy out);
* ``jax-device``: the library's compiled per-microbatch function on device-resident
  chunks, outputs left on the device (the kernel cost without host transfers);
* ``jax-lax-map``: the same function over the same chunks as one jitted ``lax.map``
  (tests the library's choice of a host loop over microbatches, mia_jax/_batching.py);
* ``naive-jacrev-loop``: a Python loop over examples of a jitted per-example
  ``jax.jacrev`` (the full K-row Jacobian; the true-class row is kept), timed on
  ``wb_naive`` examples and extrapolated linearly to N;
* ``torch-eager`` / ``torch-eager-e2e`` / ``torch-compile``: the same computation in
  PyTorch with the same weights (skipped with a note when torch is not importable).

GFLOP/s of every row use the same numerator: XLA's FLOP count of the library's batched
computation for N examples (useful work), so the rows compare like with like.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bench.cases._common import device_chunks, max_rel_err, random_variables, result_row
from bench.cost import Peaks, compiled_cost, precision_context
from bench.timing import time_fn
from mia_jax import whitebox
from mia_jax.attacks import nasr
from mia_jax.models import make_model, stack_variables

CASE = "whitebox"

MODELS: dict[str, dict[str, Any]] = {
    "mlp": dict(name="mlp", input_shape=(784,), num_classes=10, options=dict(widths=(1024, 1024))),
    "small_cnn": dict(name="small_cnn", input_shape=(28, 28, 1), num_classes=10,
                      options=dict(channels=(32, 64), hidden=128)),
    "resnet": dict(name="resnet", input_shape=(32, 32, 3), num_classes=10, options={}),
}

# --sizes wb_arch=tiny (the smoke preset): same code paths, shallower and narrower models,
# so that compiling them is quick.
TINY: dict[str, dict[str, Any]] = {
    "mlp": dict(name="mlp", input_shape=(64,), num_classes=10, options=dict(widths=(32,))),
    "small_cnn": dict(name="small_cnn", input_shape=(12, 12, 1), num_classes=10,
                      options=dict(channels=(4,), hidden=16)),
    "resnet": dict(name="resnet", input_shape=(8, 8, 3), num_classes=10,
                   options=dict(widths=(4,))),
}


def build(name: str, arch: str = "paper"):
  spec = (TINY if arch == "tiny" else MODELS)[name]
  model = make_model(spec["name"], input_shape=spec["input_shape"],
                     num_classes=spec["num_classes"], **spec["options"])
  # NumPy draws: model.init compiles op by op (eagerly) or a slow-to-compile PRNG (jitted).
  target = random_variables(model, 0)
  proxy = random_variables(model, 1)
  return model, target, proxy


def _data(model, n: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n,) + model.input_shape).astype(np.float32)
  y = rng.integers(0, model.num_classes, n).astype(np.int32)
  return x, y


def _class_means(model, layers, seed: int = 1):
  rng = np.random.default_rng(seed)
  shapes = model.layer_shapes()
  return {l: (0.1 * rng.normal(size=(model.num_classes,) + shapes[l])).astype(np.float32)
          for l in layers}


# -- the library's compiled per-microbatch functions ---------------------------------------

def _chunk_fn(model, layers, variant: str):
  """The jitted per-microbatch function the public API calls (private, cached)."""
  if variant == "rows":
    return whitebox._compiled_rows(model, layers, 0, False, False)
  if variant == "gradients":
    return nasr._compiled_features(model, _grad_layers(model))
  return whitebox._compiled_scores(model, layers, 0, True, False)


def _grad_layers(model):
  return (model.stage_names[-1],)


def _keys(model, layers, variant):
  """The output keys compared between implementations."""
  if variant == "gradients":
    return [f"grad:{l}" for l in _grad_layers(model)] + ["loss"]
  return list(layers)


# -- naive per-example baseline ------------------------------------------------------------

def _naive_fn(model, layers, variant: str):
  """Jitted per-example function (x1 [1, ...], y1 int32[]) from the full jacrev."""

  def rows_one(v, x1, y1, centered):
    feats = jax.eval_shape(lambda xx: model.features(v, xx), x1)
    zeros = {l: jnp.zeros(feats[l].shape, feats[l].dtype) for l in layers}
    jac = jax.jacrev(lambda p: model.apply_perturbed(v, x1, p)[0])(zeros)  # {l: [K, 1, ...]}
    return {l: jac[l][y1, 0] - (jac[l][:, 0].mean(0) if centered else 0.0) for l in layers}

  if variant == "rows":
    return jax.jit(lambda v, x1, y1: rows_one(v, x1, y1, False))

  if variant == "gradients":
    (stage,) = _grad_layers(model)

    def grads_one(v, x1, y1):
      def loss(p):
        z = model.apply({**v, "params": {**v["params"], stage: p}}, x1)[0]
        return -jax.nn.log_softmax(z)[y1]
      value, g = jax.value_and_grad(loss)(v["params"][stage])
      return {f"grad:{stage}": nasr.gradient_matrix(g, stage), "loss": value}

    return jax.jit(grads_one)

  def scores_one(tv, pv, means, x1, y1):
    feats = model.features(tv, x1)
    rows_t = rows_one(tv, x1, y1, True)
    out = {}
    for l in layers:
      p = jax.tree.map(lambda a: a[0], pv[l])  # the single proxy
      jac = jax.jacrev(lambda h, p=p, l=l: model.g(p, h, l)[0])(feats[l])  # [K, 1, ...]
      row_p = jac[y1, 0] - jac[:, 0].mean(0)
      out[l] = jnp.sum((feats[l][0] - means[l][y1]) * (rows_t[l] - row_p))
    return out

  return jax.jit(scores_one)


# -- torch -----------------------------------------------------------------------------------

def _torch_rows(model, target, proxy_vars, means, x, y, layers, variant, precision, mb,
                sizes, peaks, flops_total, nbytes_total, jax_ref, compile_mode, notes, common):
  """Torch rows (eager device, eager e2e, compiled device) with a check against JAX."""
  from bench import torch_ref
  torch, note = torch_ref.available()
  if torch is None:
    notes.append(note)
    return []
  device = "cuda" if torch.cuda.is_available() else "cpu"
  if device == "cuda":
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    torch.backends.cudnn.allow_tf32 = precision == "tf32"
    torch.backends.cudnn.benchmark = True
  autocast = (torch.autocast(device_type=device, dtype=torch.bfloat16) if precision == "bf16"
              else torch.autocast(device_type=device, enabled=False))
  tm = torch_ref.TorchLayered(model, target, device)
  pm = torch_ref.TorchLayered(model, jax.tree.map(lambda a: np.asarray(a)[0], proxy_vars),
                              device)
  n = x.shape[0]
  xs = [tm.to_torch(c) for c in _host_chunks(x, mb)]
  ys = [torch.as_tensor(c, device=device) for c in _host_chunks(y, mb)]
  shapes = tm.layer_shapes(xs[0])
  means_t = {l: tm.to_torch(means[l]) if means[l].ndim == 4 else
             torch.as_tensor(means[l], device=device) for l in layers}

  def sync(_):
    if device == "cuda":
      torch.cuda.synchronize()

  if variant == "rows":
    eager = lambda xb, yb: torch_ref.rows_autograd(tm, xb, yb, layers)  # noqa: E731
    func = torch_ref.rows_func(tm, shapes, layers)
  else:
    eager = lambda xb, yb: torch_ref.scores_autograd(tm, pm, means_t, xb, yb, layers)  # noqa: E731
    func = torch_ref.scores_func(tm, pm, means_t, shapes, layers)

  def run_device(f):
    with autocast:
      return [f(xb, yb) for xb, yb in zip(xs, ys)]

  def run_e2e():
    # As the JAX library does: host chunks in, outputs concatenated on the device, one
    # copy to host NumPy per output (in PyTorch's own NCHW layout: no host transpose).
    outs = []
    with autocast:
      for xc, yc in zip(_host_chunks(x, mb), _host_chunks(y, mb)):
        outs.append(eager(tm.to_torch(xc), torch.as_tensor(yc, device=device)))
    cat = {k: torch.cat([o[k] for o in outs])[:n] for k in outs[0]}
    # NumPy has no bfloat16: outputs of a bf16 run are widened on the device first.
    return {k: (v.float() if v.dtype == torch.bfloat16 else v).cpu().numpy()
            for k, v in cat.items()}

  def check(f):
    with autocast:
      out = f(xs[0], ys[0])
    got = {k: tm.to_numpy(v) for k, v in out.items()}
    return max_rel_err(got, jax_ref)

  rows = []
  common = dict(common, mode="device", torch=torch.__version__, torch_device=device)
  t = time_fn(lambda: run_device(eager), warmup=sizes["warmup"], reps=sizes["reps"], sync=sync)
  rows.append(result_row(CASE, t, examples=n, flops=flops_total, nbytes=nbytes_total,
                         peaks=peaks, impl="torch-eager", check_vs_jax=check(eager), **common))
  t = time_fn(run_e2e, warmup=sizes["warmup"], reps=sizes["reps"], sync=lambda _: None)
  rows.append(result_row(CASE, t, examples=n, flops=flops_total, nbytes=nbytes_total,
                         peaks=peaks, impl="torch-eager-e2e", **{**common, "mode": "e2e"}))
  if compile_mode == "on" or (compile_mode == "auto" and device == "cuda"):
    try:
      # Fresh dynamo caches: the closures of every model/precision share code objects, and
      # past dynamo's per-code recompile limit torch.compile silently falls back to eager.
      torch._dynamo.reset()
      compiled = torch.compile(func)
      t = time_fn(lambda: run_device(compiled), warmup=max(2, sizes["warmup"]),
                  reps=sizes["reps"], sync=sync)
      rows.append(result_row(CASE, t, examples=n, flops=flops_total, nbytes=nbytes_total,
                             peaks=peaks, impl="torch-compile", check_vs_jax=check(compiled),
                             **common))
    except Exception as e:  # noqa: BLE001 -- report and go on: compile support varies
      notes.append(f"torch.compile failed for {model.name}/{variant}: {type(e).__name__}: "
                   f"{str(e)[:300]}")
  else:
    notes.append(f"torch.compile skipped ({compile_mode}, device {device})")
  if device == "cuda":
    del xs, ys, tm, pm, means_t
    torch.cuda.empty_cache()  # give the memory back before the next JAX case
  return rows


def _host_chunks(a: np.ndarray, mb: int) -> list[np.ndarray]:
  n = a.shape[0]
  mb = max(1, min(mb, n))
  out = []
  for s in range(0, n, mb):
    c = a[s:s + mb]
    if c.shape[0] < mb:
      c = np.concatenate([c, np.repeat(c[-1:], mb - c.shape[0], axis=0)])
    out.append(c)
  return out


def _time_lax_map(fn, consts, chunks, first_out, sizes):
  """Times the chunks as one jitted ``lax.map`` of ``fn`` (the alternative to the library's
  host loop over microbatches; mia_jax/_batching.py says why the library loops).

  Returns (timing, max relative error of the first chunk's output against ``first_out``).
  """
  xs = jnp.stack([c[0] for c in chunks])
  ys = jnp.stack([c[1] for c in chunks])
  mapped = jax.jit(lambda cs, xb, yb: jax.lax.map(lambda c: fn(*cs, *c), (xb, yb)))
  timing, out = time_fn(lambda: mapped(consts, xs, ys), warmup=sizes["warmup"],
                        reps=sizes["reps"], return_output=True)
  return timing, max_rel_err(jax.tree.map(lambda a: np.asarray(a[0]), out), first_out)


# -- the case ----------------------------------------------------------------------------------

def run(sizes: dict, peaks: dict[str, Peaks], precisions, *, torch_compile: str = "auto",
        log=print) -> tuple[list[dict], list[str]]:
  """Runs case (a) for every model x variant x precision. Returns (rows, notes)."""
  rows: list[dict] = []
  notes = [f"naive-jacrev-loop: a jitted per-example jax.jacrev called in a Python loop on "
           f"{sizes['wb_naive']} examples; its time is extrapolated linearly to N"]
  n, mb = sizes["wb_n"], sizes["wb_mb"]
  for name in sizes["wb_models"]:
    model, target, proxy = build(name, sizes.get("wb_arch", "paper"))
    layers = whitebox.default_layers(model)
    x, y = _data(model, n)
    means = _class_means(model, layers)
    proxy_stack = stack_variables([proxy])
    proxies = {l: proxy_stack for l in layers}
    means_dev = {l: jnp.asarray(means[l]) for l in layers}
    chunks = device_chunks([x, y], mb)
    n_chunks = len(chunks)
    for variant in sizes["wb_variants"]:
      fn = _chunk_fn(model, layers, variant)
      keys = _keys(model, layers, variant)
      if variant == "rows":
        args = lambda xb, yb: (target, xb, yb)  # noqa: E731
        library = lambda: whitebox.jacobian_rows(  # noqa: E731
            model, target, x, y, layers=layers, microbatch_size=mb)
      elif variant == "gradients":
        args = lambda xb, yb: (target, xb, yb)  # noqa: E731
        library = lambda: nasr.attack_features(  # noqa: E731
            model, target, x, y, layers=_grad_layers(model), microbatch_size=mb)
      else:
        args = lambda xb, yb: (target, proxies, means_dev, xb, yb)  # noqa: E731
        library = lambda: whitebox.layer_scores(  # noqa: E731
            model, target, proxies, means, x, y, microbatch_size=mb)
      # fp32 reference on the first chunk, for the precision and torch checks.
      with precision_context("fp32"):
        ref = jax.device_get(fn(*args(*chunks[0])))
      for precision in precisions:
        log(f"  whitebox {name}/{variant}/{precision}: N={n} mb={mb} layers={list(layers)}")
        pk = peaks.get(precision)
        common = dict(model=name, variant=variant, precision=precision, n=n, microbatch=mb,
                      layers=list(_grad_layers(model) if variant == "gradients" else layers),
                      arch=model.spec, input_shape=list(model.input_shape))
        with precision_context(precision):
          cost = compiled_cost(fn, *args(*chunks[0]))
          flops = cost.flops * n_chunks if cost.flops else None
          nbytes = cost.bytes_accessed * n_chunks if cost.bytes_accessed else None
          t_dev = time_fn(lambda: [fn(*args(xb, yb)) for xb, yb in chunks],
                          warmup=sizes["warmup"], reps=sizes["reps"])
          low = jax.device_get(fn(*args(*chunks[0])))
          dev_row = result_row(CASE, t_dev, examples=n, flops=flops, nbytes=nbytes, peaks=pk,
                               impl="jax-device", mode="device",
                               check_vs_fp32=max_rel_err(low, ref) if precision != "fp32" else None,
                               xla_memory_per_chunk=cost.memory,
                               flops_source=cost.flops_source, **common)
          t_map, check_map = _time_lax_map(fn, args(*chunks[0])[:-2], chunks, low, sizes)
          map_row = result_row(CASE, t_map, examples=n, flops=flops, nbytes=nbytes, peaks=pk,
                               impl="jax-lax-map", mode="device", check_vs_device=check_map,
                               **common)
          t_lib = time_fn(library, warmup=sizes["warmup"], reps=sizes["reps"],
                          sync=lambda _: None)
          lib_row = result_row(CASE, t_lib, examples=n, flops=flops, nbytes=nbytes, peaks=pk,
                               impl="jax-library", mode="e2e", **common)
          # Naive loop over examples (device-resident inputs), extrapolated to N.
          k = min(sizes["wb_naive"], n)
          naive = _naive_fn(model, layers, variant)
          xs1 = [jax.device_put(x[i:i + 1]) for i in range(k)]
          ys1 = [jax.device_put(np.int32(y[i])) for i in range(k)]
          if variant in ("rows", "gradients"):
            call = lambda i: naive(target, xs1[i], ys1[i])  # noqa: E731
          else:
            call = lambda i: naive(target, proxies, means_dev, xs1[i], ys1[i])  # noqa: E731
          t_naive = time_fn(lambda: [call(i) for i in range(k)], warmup=sizes["warmup"],
                            reps=sizes["reps"])
          naive_out = jax.device_get([call(i) for i in range(min(k, 4))])
          batched = jax.device_get(fn(*args(*chunks[0])))
          check_naive = max_rel_err(
              [{l: o[l] for l in keys} for o in naive_out],
              [{l: np.asarray(batched[l])[i] for l in keys} for i in range(len(naive_out))])
          scale = n / k
          t_naive_n = t_naive._replace(
              median=t_naive.median * scale, q1=t_naive.q1 * scale, q3=t_naive.q3 * scale,
              iqr=t_naive.iqr * scale, times=tuple(v * scale for v in t_naive.times))
          naive_row = result_row(CASE, t_naive_n, examples=n, flops=flops, nbytes=nbytes,
                                 peaks=pk, impl="naive-jacrev-loop", mode="device",
                                 extrapolated_from=k, check_vs_batched=check_naive, **common)
        case_rows = [dev_row, map_row, lib_row, naive_row]
        if variant == "gradients":
          notes.append("gradients (Nasr et al. features): no PyTorch implementation is timed")
        else:
          case_rows += _torch_rows(model, target, proxy_stack, means, x, y, layers, variant,
                                 precision, mb, sizes, pk, flops, nbytes,
                                   {l: np.asarray(ref[l]) for l in layers}, torch_compile,
                                   notes, common)
        for r in case_rows:
          base = dev_row if r["mode"] == "device" else lib_row
          r["jax_speedup"] = r["median_s"] / base["median_s"] if base["median_s"] > 0 else None
        rows += case_rows
        for r in case_rows:
          log(f"    {r['impl']:<18} {r['median_s']:.4g} s  {r['examples_per_s']:.4g} ex/s"
              f"  JAX speedup {r['jax_speedup']:.3g}x")
  return rows, sorted(set(notes))
