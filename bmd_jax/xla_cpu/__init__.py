"""XLA:CPU speed-ups, plugged into the core on CPU only (GPUs and TPUs take the plain path).

channel_sums (per-channel sums as products with ones; batch norm's training pass),
conv_grads (convolutions with a faster weight gradient), pooling (max pooling as strided
slices), cpu_barriers (the train step compiled keeping optimization barriers) and xla_flags
(process-wide flags set before JAX starts). Each keeps the plain path's values; see
docs/BENCHMARKS.md for what each saves.

May import: the standard library, jax, flax, numpy and itself. Never: any other bmd_jax
package.
"""
