"""batch-agent: an open, faithful replacement for the Azure Batch node agent.

The public surface is the ``batch-agent`` command (``agent.cli``); modules below it are
internal and may change.
"""

__version__ = "0.1.0"
