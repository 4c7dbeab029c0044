"""A NodeService in its own process (for the restart tests): ``python service_child.py ROOT STATE``.

Serves on a SqliteStore in STATE with the node root ROOT until killed; prints "serving" once
recovery is done."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from service_kit import service

from agent.store import SqliteStore


async def main(root: Path, state: Path) -> None:
    svc = service(root, SqliteStore(state))
    await svc.start()
    print("serving", flush=True)
    await svc.serve()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), Path(sys.argv[2])))
