"""A researcher's own parts for bmd_jax, outside its package: a sign estimator (estimator.py),
a binary network built from bmd_jax's layers (net.py), a loss term (term.py) and the config
that names them by import path (config.py). See README.md."""
