"""bmd_jax: Bi-Modal Distributed Binarized Neural Networks (BD-BNN) in JAX and Flax.

Sub-packages (docs/ARCHITECTURE.md draws them and their import arrows):

- ``core``: what a user imports to build binary networks: ``quantizers`` (sign estimators),
  ``layers`` (binary Flax modules), ``losses`` (kurtosis, WDM, distillation), ``objective``,
  ``components``, ``bimodality``; with ``models`` (the registry) and ``data`` beside it;
- ``training``: the train step and the loop; ``infra``: paths, configs, checkpoints and the
  command-line boundary that training and the tools share; ``tools``: export, analyze,
  summary, convert; ``xla_cpu``: XLA:CPU speed-ups the core plugs in on CPU only;
- ``configs``: the recipes; the command line is ``python -m bmd_jax.main``.

Importing bmd_jax sets no process-wide state. Its faster XLA:CPU flags are one call, made by
the entry points and by a notebook before its first JAX computation:
``bmd_jax.configure_cpu()`` (see xla_cpu/xla_flags.py).
"""

__version__ = "0.1.0"

from bmd_jax.xla_cpu.xla_flags import configure_cpu  # noqa: E402  (standard library only)
