"""Splitting a commandLine (``agent.cmdline.split``) against ``str.split`` on the same input, for
inputs of growing size: the ratio must stay flat (linear time). ``shlex.split`` is timed on the
smallest sizes only, to show what it replaced (quadratic in the length of one token).

    python bench/bench_cmdline.py [--runs 3] [--mb 50]
"""

from __future__ import annotations

import argparse
import shlex
from functools import partial

from _common import median, report, timed

from agent.cmdline import split


def _inputs(size: int) -> dict[str, str]:
    return {
        "one plain token": "a" * size,
        "many short tokens": "ab " * (size // 3),
        "one token of quoted pieces": "'a'\"b\\\"\"c\\ " * (size // 12),
        "one double-quoted token": '"' + "x\\\"" * (size // 3) + '"',
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--mb", type=int, default=50)
    args = parser.parse_args()
    sizes = sorted({1 << 20, 10 << 20, args.mb << 20})
    for name in _inputs(1):
        rows: list[tuple[str, float, str]] = []
        ratios: list[float] = []
        for size in sizes:
            text = _inputs(size)[name]
            ours = median(timed(partial(split, text), args.runs))
            base = median(timed(text.split, args.runs))
            rows += [(f"{len(text) / 2**20:.0f} MB: agent.cmdline.split (median)", ours * 1000, "ms"),
                     (f"{len(text) / 2**20:.0f} MB: str.split (median)", base * 1000, "ms")]
            ratios.append(ours / base)
        small = _inputs(64 << 10)[name]
        rows.append(("64 KB: shlex.split (one run)", timed(partial(shlex.split, small), 1)[0] * 1000, "ms"))
        rows.append(("64 KB: agent.cmdline.split (one run)", timed(partial(split, small), 1)[0] * 1000, "ms"))
        report(f"split: {name}", rows, "ratio to str.split at " + ", ".join(f"{s >> 20} MB" for s in sizes),
               ratios[-1], "flat across sizes: " + " / ".join(f"{r:.2f}" for r in ratios))


if __name__ == "__main__":
    main()
