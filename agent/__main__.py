"""``python -m agent`` is the same as the ``batch-agent`` command."""

from agent.cli import main

raise SystemExit(main())
