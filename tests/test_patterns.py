"""agent.patterns: the filePattern grammar (§7.2) and blob naming (§7.3) on a real tree."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from agent.patterns import (
    MatchedFile,
    ResolvedPattern,
    blob_name,
    expand_vars,
    has_wildcard,
    match_files,
    resolve_pattern,
)

# <task>/stdout.txt, <task>/stderr.txt, <task>/wd/... ; <other>/ holds targets of absolute patterns.
FILES = [
    "stdout.txt", "stderr.txt",
    "wd/a.txt", "wd/b.gif", "wd/.a.gif", "wd/abc", "wd/abcdef", "wd/abc*", "wd/[x]", "wd/x",
    "wd/back\\slash", "wd/a1.log", "wd/b1.log", "wd/c1.log", "wd/d1.log", "wd/$NOPE.txt",
    "wd/out.dat", "wd/sub/b.txt", "wd/sub/dir/b.txt", "wd/sub/dir/c.dat", "wd/sub/.dot/d.txt",
    "wd/.hid/h.txt", "wd/.hid/deep/h2.txt", "wd/real/r.txt", "wd/adir.txt/inner.dat",
]
SYMLINKS = {  # link (under wd) -> target (relative to wd)
    "link.txt": "a.txt",
    "dangling.txt": "missing",
    "linkdir": "real",
    "real/loop": ".",       # a loop: ** must not follow it
}


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(working dir, other dir) of a fresh tree shared by the table's rows (nothing writes to it)."""
    root = tmp_path_factory.mktemp("patterns")
    task = root / "task"
    for name in FILES:
        path = task / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(name)
    (task / "wd" / "emptydir").mkdir()
    wd = task / "wd"
    for link, target in SYMLINKS.items():
        os.symlink(wd / target, wd / link)
    other = root / "other"
    other.mkdir()
    for name in ("o.txt", "o2.txt", "p.txt"):
        (other / name).write_text(name)
    return wd, other


# pattern, env, relative names (sorted by path), blob names for path="out".
# With no path the blob name is the relative name (§7.3; for a literal pattern that is the file name).
MATCH_TABLE = [
    # .. reaches the task dir
    ("../std*.txt", {}, ["stderr.txt", "stdout.txt"], ["out/stderr.txt", "out/stdout.txt"]),
    ("../stdout.txt", {}, ["stdout.txt"], ["out"]),
    ("./sub/../a.txt", {}, ["a.txt"], ["out"]),
    # absolute patterns (@OTHER is replaced by the absolute "other" dir)
    ("@OTHER/o*.txt", {}, ["o.txt", "o2.txt"], ["out/o.txt", "out/o2.txt"]),
    ("@OTHER/p.txt", {}, ["p.txt"], ["out"]),
    # $VAR / ${VAR} from the given env; unknown left as written
    ("$D/dir/*.dat", {"D": "sub"}, ["c.dat"], ["out/c.dat"]),
    ("${D}/*.txt", {"D": "sub"}, ["b.txt"], ["out/b.txt"]),
    ("*.${EXT}", {"EXT": "gif"}, ["b.gif"], ["out/b.gif"]),
    ("$ABS/p.txt", {"ABS": "@OTHER"}, ["p.txt"], ["out"]),
    ("$NOPE.txt", {}, ["$NOPE.txt"], ["out"]),
    # * within one segment; a directory named *.txt and a dangling link are not returned
    ("*.txt", {}, ["$NOPE.txt", "a.txt", "link.txt"], ["out/$NOPE.txt", "out/a.txt", "out/link.txt"]),
    ("abc*", {}, ["abc", "abc*", "abcdef"], ["out/abc", "out/abc*", "out/abcdef"]),
    ("a**.txt", {}, ["a.txt"], ["out/a.txt"]),
    # ** at start (incl. zero dirs), middle, end; never into dot dirs or symlinked dirs (loop)
    ("**/*.txt", {}, ["$NOPE.txt", "a.txt", "link.txt", "real/r.txt", "sub/b.txt", "sub/dir/b.txt"],
     ["out/$NOPE.txt", "out/a.txt", "out/link.txt", "out/real/r.txt", "out/sub/b.txt", "out/sub/dir/b.txt"]),
    ("**/*.dat", {}, ["adir.txt/inner.dat", "out.dat", "sub/dir/c.dat"],
     ["out/adir.txt/inner.dat", "out/out.dat", "out/sub/dir/c.dat"]),
    ("**/a.txt", {}, ["a.txt"], ["out/a.txt"]),
    ("sub/**/b.txt", {}, ["b.txt", "dir/b.txt"], ["out/b.txt", "out/dir/b.txt"]),
    ("sub/**", {}, ["b.txt", "dir/b.txt", "dir/c.dat"], ["out/b.txt", "out/dir/b.txt", "out/dir/c.dat"]),
    ("**/r.txt", {}, ["real/r.txt"], ["out/real/r.txt"]),
    # a single-level wildcard segment does follow a symlinked dir
    ("*/*.txt", {}, ["linkdir/r.txt", "real/r.txt", "sub/b.txt"],
     ["out/linkdir/r.txt", "out/real/r.txt", "out/sub/b.txt"]),
    # ?, [a-c], [!abc]
    ("?bc", {}, ["abc"], ["out/abc"]),
    ("[a-c]1.log", {}, ["a1.log", "b1.log", "c1.log"], ["out/a1.log", "out/b1.log", "out/c1.log"]),
    ("[!abc]1.log", {}, ["d1.log"], ["out/d1.log"]),
    # a literal wildcard char inside brackets; [x] is a class
    ("abc[*]", {}, ["abc*"], ["out/abc*"]),
    ("[x]", {}, ["x"], ["out/x"]),
    ("[[]x]", {}, ["[x]"], ["out/[x]"]),
    ("abc", {}, ["abc"], ["out"]),
    # backslash is an ordinary character, literal or not
    ("back\\slash", {}, ["back\\slash"], ["out"]),
    ("back\\sl*", {}, ["back\\slash"], ["out/back\\slash"]),
    # dot files and dot dirs
    ("*.gif", {}, ["b.gif"], ["out/b.gif"]),
    (".*.gif", {}, [".a.gif"], ["out/.a.gif"]),
    ("?a.gif", {}, [], []),
    ("[.]a.gif", {}, [], []),
    (".hid/*", {}, ["h.txt"], ["out/h.txt"]),
    (".hid/**/*.txt", {}, ["deep/h2.txt", "h.txt"], ["out/deep/h2.txt", "out/h.txt"]),
    (".h*/*.txt", {}, [".hid/h.txt"], ["out/.hid/h.txt"]),
    ("**/.dot/*", {}, ["sub/.dot/d.txt"], ["out/sub/.dot/d.txt"]),
    ("sub/.dot/d.txt", {}, ["d.txt"], ["out"]),
    # nothing matched is an empty list; directories and dangling links are never returned
    ("*.nope", {}, [], []),
    ("missing.txt", {}, [], []),
    ("emptydir", {}, [], []),
    ("sub/dir", {}, [], []),
    ("adir.txt", {}, [], []),
    ("linkdir", {}, [], []),
    ("dangling.txt", {}, [], []),
    ("link.txt", {}, ["link.txt"], ["out"]),
    # .. after a wildcard segment matches nothing (it would put .. into blob names)
    ("*/../a.txt", {}, [], []),
]


def _fill(text: str, other: Path) -> str:
    return text.replace("@OTHER", str(other))


@pytest.mark.parametrize(("pattern", "env", "names", "blobs"), MATCH_TABLE, ids=[r[0] for r in MATCH_TABLE])
def test_match_and_blob_names(
    tree: tuple[Path, Path], pattern: str, env: dict[str, str], names: list[str], blobs: list[str]
) -> None:
    wd, other = tree
    resolved = resolve_pattern(_fill(pattern, other), wd, {k: _fill(v, other) for k, v in env.items()})
    matches = match_files(resolved)
    assert [m.relative_name for m in matches] == names
    assert [blob_name(resolved, m, "out") for m in matches] == blobs
    assert [blob_name(resolved, m, None) for m in matches] == names
    for m in matches:
        assert m.path == Path(resolved.base_path) / m.relative_name
        assert m.path.is_absolute()


def test_symlinks_are_flagged_not_resolved(tree: tuple[Path, Path]) -> None:
    wd, _ = tree
    matches = match_files(resolve_pattern("*.txt", wd, {}))
    assert {m.relative_name: m.is_symlink for m in matches} == {
        "$NOPE.txt": False, "a.txt": False, "link.txt": True,
    }
    assert [m.path for m in matches if m.is_symlink] == [wd / "link.txt"]


WD = "/mnt/batch/tasks/workitems/j/job-1/t1/wd"
TASK = "/mnt/batch/tasks/workitems/j/job-1/t1"

# pattern, env, full_pattern, base_path, has_wildcard -- pure, no file system
RESOLVE_TABLE = [
    ("../stdout.txt", {}, f"{TASK}/stdout.txt", TASK, False),     # the native fileuploadout.txt line
    ("../std*.txt", {}, f"{TASK}/std*.txt", TASK, True),
    ("output.txt", {}, f"{WD}/output.txt", WD, False),
    ("**/*.dat", {}, f"{WD}/**/*.dat", WD, True),
    ("out/**", {}, f"{WD}/out/**", f"{WD}/out", True),
    ("/abs/x/*.log", {}, "/abs/x/*.log", "/abs/x", True),
    ("/abs/x/y.log", {}, "/abs/x/y.log", "/abs/x", False),
    ("$AZ_BATCH_TASK_DIR/o/*.txt", {"AZ_BATCH_TASK_DIR": TASK}, f"{TASK}/o/*.txt", f"{TASK}/o", True),
    ("${NOPE}/a*", {}, f"{WD}/${{NOPE}}/a*", f"{WD}/${{NOPE}}", True),
    ("$EMPTY/x*", {"EMPTY": ""}, "/x*", "/", True),       # as a shell would: now absolute
    ("a/./b/../c/*.txt", {}, f"{WD}/a/c/*.txt", f"{WD}/a/c", True),
    ("x//y?.txt", {}, f"{WD}/x/y?.txt", f"{WD}/x", True),
    ("a*/./b/../c", {}, f"{WD}/a*/b/../c", WD, True),     # after a wildcard: . dropped, .. kept
    ("abc[*]", {}, f"{WD}/abc[*]", WD, True),
    ("d/[!abc]/e", {}, f"{WD}/d/[!abc]/e", f"{WD}/d", True),
    ("a[b/c", {}, f"{WD}/a[b/c", f"{WD}/a[b", False),     # unclosed [ is literal
    ("../../../../../../../..", {}, "/", "/", False),
]


@pytest.mark.parametrize(("pattern", "env", "full", "base", "wild"), RESOLVE_TABLE,
                         ids=[r[0] for r in RESOLVE_TABLE])
def test_resolve_pattern(pattern: str, env: dict[str, str], full: str, base: str, wild: bool) -> None:
    assert resolve_pattern(pattern, Path(WD), env) == ResolvedPattern(pattern, full, base, wild)


def test_relative_working_dir_is_a_caller_bug() -> None:
    with pytest.raises(ValueError, match="absolute"):
        resolve_pattern("*.txt", Path("wd"), {})


@pytest.mark.parametrize(("text", "expected"), [
    ("$A/x", "1/x"),
    ("${A}x", "1x"),
    ("$Ax", "$Ax"),               # the name is "Ax": unknown, left as written
    ("${NOPE}/$NOPE", "${NOPE}/$NOPE"),
    ("$", "$"),
    ("a$-b", "a$-b"),
    ("$B", "$A"),                 # one pass: a value is not expanded again
    ("$A_B${A}", "2" + "1"),
])
def test_expand_vars(text: str, expected: str) -> None:
    assert expand_vars(text, {"A": "1", "B": "$A", "A_B": "2"}) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("abc", False), ("a*", True), ("a?", True), ("**", True), ("[abc]", True), ("[a-c]x", True),
    ("[!a]", True), ("abc[*]", True), ("[]]", True), ("a[b", False), ("[]", False), ("[!]", False),
    ("a]", False), ("$X{y}", False), ("x/y/z*", True), ("x/y/z", False), ("a\\*", True),
])
def test_has_wildcard(text: str, expected: bool) -> None:
    assert has_wildcard(text) is expected


@pytest.mark.parametrize(("pattern", "path", "expected"), [
    ("output.txt", "task1/output.txt", "task1/output.txt"),   # literal + path: path is the blob name
    ("output.txt", None, "output.txt"),
    ("output.txt", "", "output.txt"),                          # empty path = no path
    ("*.txt", "mytask", "mytask/output.txt"),
    ("*.txt", "mytask/", "mytask/output.txt"),
    ("*.txt", "", "output.txt"),
    ("*.txt", None, "output.txt"),
])
def test_blob_name_table(pattern: str, path: str | None, expected: str) -> None:
    resolved = resolve_pattern(pattern, Path(WD), {})
    match = MatchedFile(Path(WD) / "output.txt", "output.txt", is_symlink=False)
    assert blob_name(resolved, match, path) == expected


_NAMES = st.text(st.characters(codec="utf-8", exclude_characters="/\x00"), min_size=1, max_size=40)
_SAFE = st.text(st.characters(codec="utf-8", exclude_characters="/\x00*?[$"), min_size=1, max_size=40)


def _one_file(name: str) -> tuple[tempfile.TemporaryDirectory[str], Path]:
    holder = tempfile.TemporaryDirectory()
    wd = Path(holder.name)
    for decoy in (name, "x" + name, name + "x", "x"):
        (wd / decoy).write_text(decoy)
    return holder, wd


@given(name=_SAFE.filter(lambda n: n not in (".", "..")), path=st.sampled_from([None, "dest/blob"]))
def test_literal_name_matches_only_itself(name: str, path: str | None) -> None:
    holder, wd = _one_file(name)
    with holder:
        resolved = resolve_pattern(name, wd, {})
        assert not resolved.has_wildcard
        assert [(m.path, m.relative_name) for m in match_files(resolved)] == [(wd / name, name)]
        assert blob_name(resolved, match_files(resolved)[0], path) == (path or name)


@given(name=_NAMES.filter(lambda n: n not in (".", "..")))
@example(name="[\\")  # found by CI: wcmatch's NODIR dropped names ending in a backslash
@example(name="a\\")
def test_bracket_escaped_name_matches_only_itself(name: str) -> None:
    """Any file name, its wildcard and $ characters written as [*], [?], [[], [$], matches only itself."""
    holder, wd = _one_file(name)
    pattern = "".join(f"[{c}]" if c in "*?[$" else c for c in name)
    with holder:
        resolved = resolve_pattern(pattern, wd, {"X": "expanded"})
        matches = match_files(resolved)
        assert [(m.path, m.relative_name) for m in matches] == [(wd / name, name)]
        assert blob_name(resolved, matches[0], "out") == ("out/" + name if resolved.has_wildcard else "out")


@pytest.mark.parametrize("pattern", ["*", "a?", "a*", "**/*"])
def test_wildcards_match_names_ending_in_backslash(tmp_path: Path, pattern: str) -> None:
    (tmp_path / "a\\").write_text("x")
    (tmp_path / "dir").mkdir()
    names = [m.relative_name for m in match_files(resolve_pattern(pattern, tmp_path, {}))]
    assert names == ["a\\"]
