"""What training and the tools share: paths (local or gs://), config files and their checks,
Orbax checkpoints (writing, resuming, finding and reading them), the command-line boundary.

May import: the standard library, third-party packages and itself. Never: core, training,
tools, models, data.
"""
