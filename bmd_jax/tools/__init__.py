"""Command-line tools that read finished runs: export (with packed +-1 weights and the
portable StableHLO form), analyze (weight distributions), summary, convert (PyTorch
checkpoints), compare. Run as ``python -m bmd_jax.tools.<name>``.

May import: core, models, data, infra, xla_cpu. Never: training (a test keeps it so).
"""
