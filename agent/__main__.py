"""``python -m agent`` and the ``batch-agent`` console script (the same command).

The entry point sets up the process before ``agent.cli`` is imported: batch-agent uses no
pydantic plugins, and looking for them scans the metadata of every installed distribution on
the first model build (20-50 ms of each start). Tasks never see the variable: their
environment is built from scratch (``agent.environment``).
"""

from __future__ import annotations

import os


def main() -> int:
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    from agent.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    raise SystemExit(main())
