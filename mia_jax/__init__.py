"""mia-jax: membership-inference attacks in JAX.

Submodules: ``data``, ``models``, ``train``, ``signals``, ``whitebox``, ``metrics``,
``attacks``, ``defenses``, ``dp``, ``synthesis``, ``sharding``, ``checkpoints``,
``audit``, ``report``. Orientation everywhere:
higher score = more likely member; ``keep[m, i]`` = example i in model m's training set.
"""

__version__ = "0.1.0"

from mia_jax._validation import MiaInputError  # noqa: E402

__all__ = ["MiaInputError", "__version__"]
