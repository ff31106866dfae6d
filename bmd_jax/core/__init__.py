"""The core: binary networks' building blocks in plain JAX and Flax.

Sign estimators (quantizers), binary layers, the loss terms, the objective built from them,
components named by import path, and bi-modality measures. This is what a researcher imports
into their own network. It needs jax, flax, optax and numpy alone.

May import: bmd_jax.xla_cpu (the CPU speed-ups, plugged in through its package) and itself.
Never: training, infra, tools, data, models.
"""
