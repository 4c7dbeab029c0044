"""``outputFiles[].filePattern`` on Linux (semantics doc §7.2) and the blob naming rule (§7.3).

Owns: expanding ``$VAR`` / ``${VAR}`` from the task's environment, making a pattern absolute,
splitting it into base path and wildcard tail, matching it against the file system, and naming
the blob of each match. Must not: open, upload or change files, resolve symlinks in the paths it
returns, read ``os.environ``, log, or raise for a user's pattern (no match is an empty list).

Grammar: only ``/`` separates directories; a segment has a wildcard if it holds ``*``, ``?`` or a
complete bracket expression (``[abc]``, ``[a-c]``, ``[!abc]``); ``**`` as a whole segment is any
number (incl. zero) of directories. Wildcards never match a name beginning with ``.`` unless the
pattern segment itself begins with ``.``. A literal wildcard character goes in brackets
(``abc[*]``); a backslash is an ordinary character.

Choices where the sources are silent (UNCONFIRMED):

* An unknown variable is left as written (UPLOADER uses ``os.path.expandvars``, which does so).
  Expansion is one pass; a value's wildcards and ``/`` take effect as if typed.
* ``.`` and ``..`` before the first wildcard segment are folded lexically, without resolving
  symlinks (UPLOADER calls ``Path.resolve()``), so ``resolve_pattern`` does no I/O. After it, ``.``
  is dropped and ``..`` makes the pattern match nothing: it would put ``..`` into blob names.
* ``**`` never enters dot directories nor symlinked directories (no loops); a single-level
  wildcard segment (``*/x``) does follow a symlinked directory. A trailing ``**`` matches every
  non-dot file below; ``a**b`` inside a segment is ``a*b``.
* A symlink whose target is a regular file is returned with ``is_symlink=True`` (the uploader
  opens it with the task user's rights); dangling links and links to directories are skipped.
  A root agent runs ``match_files`` as the task user (``agent.userfiles``): a path it may not
  reach (``EACCES``) is skipped like one that does not exist, so a pattern tells it nothing more.
* An unclosed ``[`` is literal. UPLOADER counts only ``*`` as a wildcard; we also count ``?`` and
  brackets. wcmatch adds ``[^abc]`` (= ``[!abc]``) and POSIX classes (``[[:digit:]]``).
* An empty ``path`` is treated as no path.

wcmatch (``glob`` with ``GLOBSTAR``) walks the wildcard tail: it already has the dot rule,
globstar and the no-follow rule measured in tests/test_patterns.py. It cannot be configured to
the rest, so this module escapes backslashes (wcmatch's escape character), decides "has a
wildcard" itself (``is_magic`` flags any ``[``, ``]`` or ``\\``), and re-checks each match with
``stat`` (wcmatch returns dangling symlinks). wcmatch's ``NODIR`` is not used: it also drops
file names that end in a backslash (wcmatch 12.0), and the ``stat`` check drops directories.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from wcmatch import glob as wcglob

_VAR = re.compile(r"\$(\w+|\{[^}]*\})", re.ASCII)  # the same tokens as posixpath.expandvars
_WILDCARD = re.compile(r"[*?]|\[!?+\]?+[^\]]*\]")  # an unclosed "[" stays literal (fnmatch)
_GLOB_FLAGS = wcglob.GLOBSTAR


@dataclass(frozen=True, slots=True)
class ResolvedPattern:
    original: str          # as the user wrote it
    full_pattern: str      # expanded and made absolute (fileuploadout.txt "full_pattern")
    base_path: str         # absolute base path (fileuploadout.txt "base_path")
    has_wildcard: bool


@dataclass(frozen=True, slots=True)
class MatchedFile:
    path: Path             # absolute path of the file as matched (not resolved)
    relative_name: str     # relative to base_path, '/' separated
    is_symlink: bool


def expand_vars(text: str, env: Mapping[str, str]) -> str:
    """Replace ``$VAR`` and ``${VAR}`` found in ``env``; leave unknown ones as written."""

    def value(m: re.Match[str]) -> str:
        name = m.group(1).removeprefix("{").removesuffix("}")
        return env.get(name, m.group(0))

    return _VAR.sub(value, text)


def has_wildcard(segment_or_pattern: str) -> bool:
    """True if any ``/``-separated segment holds ``*``, ``?`` or a complete ``[...]``."""
    return any(_WILDCARD.search(seg) for seg in segment_or_pattern.split("/"))


def resolve_pattern(pattern: str, working_dir: Path, env: Mapping[str, str]) -> ResolvedPattern:
    """Expand, make absolute against ``working_dir`` and split into base path and tail."""
    if not working_dir.is_absolute():
        raise ValueError(f"working_dir must be absolute, got {working_dir}")
    expanded = expand_vars(pattern, env)
    if not expanded.startswith("/"):
        expanded = f"{working_dir}/{expanded}"
    segments = [s for s in expanded.split("/") if s not in ("", ".")]
    first = next((i for i, s in enumerate(segments) if has_wildcard(s)), None)
    if first is None:
        full = _fold(segments)
        return ResolvedPattern(pattern, _join(full), _join(full[:-1]), has_wildcard=False)
    base = _join(_fold(segments[:first]))
    return ResolvedPattern(pattern, _child(base, "/".join(segments[first:])), base, has_wildcard=True)


def match_files(resolved: ResolvedPattern) -> list[MatchedFile]:
    """Regular files (and symlinks to them, flagged) matching ``resolved``, sorted by path."""
    base = Path(resolved.base_path)
    if not resolved.has_wildcard:
        path = Path(resolved.full_pattern)
        found = _file(path, path.name)
        return [found] if found else []
    tail = resolved.full_pattern.removeprefix(resolved.base_path).lstrip("/")
    if ".." in tail.split("/"):
        return []
    names = wcglob.glob(tail.replace("\\", "\\\\"), root_dir=base, flags=_GLOB_FLAGS)
    found_files = (_file(base / name, name) for name in names)
    return sorted((f for f in found_files if f), key=lambda f: f.path)


def blob_name(resolved: ResolvedPattern, match: MatchedFile, path: str | None) -> str:
    """The blob name for ``match`` under ``destination.container.path`` (§7.3 table)."""
    if not resolved.has_wildcard:
        return path or match.relative_name
    prefix = (path or "").rstrip("/")
    return f"{prefix}/{match.relative_name}" if prefix else match.relative_name


def _fold(segments: list[str]) -> list[str]:
    out: list[str] = []
    for seg in segments:
        if seg != "..":
            out.append(seg)
        elif out:
            out.pop()
    return out


def _join(segments: list[str]) -> str:
    return "/" + "/".join(segments)


def _child(base: str, rest: str) -> str:
    return f"{base.rstrip('/')}/{rest}"


def _file(path: Path, relative_name: str) -> MatchedFile | None:
    try:
        link = stat.S_ISLNK(os.lstat(path).st_mode)
        regular = stat.S_ISREG(os.stat(path).st_mode)
    except OSError:  # gone, dangling, a loop, or not ours to see: nothing to upload
        return None
    return MatchedFile(path, relative_name, link) if regular else None
