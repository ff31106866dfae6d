"""The training application: train state and step, the loop, its input, sharding, checkpoints
by policy, records and metric writers.

May import: core, models, data, infra, xla_cpu. Never: tools.
"""
