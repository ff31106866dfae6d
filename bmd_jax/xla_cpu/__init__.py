"""XLA:CPU speed-ups, plugged into the core on CPU only (GPUs and TPUs take the plain path).

channel_sums (per-channel sums as products with ones; batch norm's training pass),
conv_grads (convolutions with a faster weight gradient), pooling (max pooling as strided
slices), cpu_barriers (the train step compiled keeping optimization barriers) and xla_flags
(process-wide flags set before JAX starts). Each keeps the plain path's values; see
docs/BENCHMARKS.md for what each saves.

May import: the standard library, jax, flax, numpy and itself. Never: any other bmd_jax
package.
"""

# The seam: the core and the models reach these speed-ups through the names below only (a
# test keeps it so); the train loop's compile options (cpu_barriers) and the process-wide
# flags (xla_flags) are the entry points' and the loop's, imported from their modules.
from bmd_jax.xla_cpu.channel_sums import batch_norm_train, per_channel
from bmd_jax.xla_cpu.conv_grads import conv_general_dilated
from bmd_jax.xla_cpu.pooling import max_pool
