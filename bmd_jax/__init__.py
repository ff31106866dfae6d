"""bmd_jax: Bi-Modal Distributed Binarized Neural Networks (BD-BNN) in JAX and Flax.

Importable pieces that work on their own: ``quantizers`` (sign estimators), ``layers``
(binary Flax modules), ``losses`` (kurtosis, WDM, distillation), ``models`` (registry).
Training lives in ``train``; the command line in ``main``.
"""

__version__ = "0.1.0"

# Before anything imports JAX's backend: XLA:CPU convolutions on Eigen (see xla_flags.py).
from bmd_jax import xla_flags as _xla_flags

_xla_flags.apply_at_import()
