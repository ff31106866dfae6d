"""bmd_jax: Bi-Modal Distributed Binarized Neural Networks (BD-BNN) in JAX and Flax.

Importable pieces that work on their own: ``quantizers`` (sign estimators), ``layers``
(binary Flax modules), ``losses`` (kurtosis, WDM, distillation), ``models`` (registry).
Training lives in ``train``; the command line in ``main``.

Importing bmd_jax sets no process-wide state. Its faster XLA:CPU flags are one call, made by
the entry points and by a notebook before its first JAX computation:
``bmd_jax.configure_cpu()`` (see xla_flags.py).
"""

__version__ = "0.1.0"

from bmd_jax.xla_flags import configure_cpu  # noqa: E402  (standard library only)
