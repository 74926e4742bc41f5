"""mia-jax: membership-inference attacks in JAX.

Submodules: ``data``, ``models``, ``train``, ``signals``, ``whitebox``, ``metrics``,
``attacks``, ``defenses``, ``dp``, ``synthesis``, ``sharding``, ``checkpoints``,
``audit``, ``report``, ``evaluate``. ``mia_jax.evaluate(...)`` runs the black-box attacks
on outputs a user already computed (logits or losses; see :mod:`mia_jax.evaluate`).
Orientation everywhere:
higher score = more likely member; ``keep[m, i]`` = example i in model m's training set.
"""

__version__ = "0.1.0"

from mia_jax._validation import MiaInputError  # noqa: E402
# The function shadows its module's name on the package: ``mia_jax.evaluate`` is the
# function; import names from the module with ``from mia_jax.evaluate import ...``.
from mia_jax.evaluate import EvaluateResult, evaluate  # noqa: E402

__all__ = ["EvaluateResult", "MiaInputError", "__version__", "evaluate"]
