"""agent.nodefs: link-safe primitives on a real file system (as root: owners, other users' dirs)."""

from __future__ import annotations

import errno
import os
import pwd
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.errors import ConfigError
from agent.nodefs import (
    create_at,
    create_file,
    empty_dir,
    ensure_dir,
    open_beneath,
    open_dir,
    open_trusted,
    walk_beneath,
)

NOBODY = pwd.getpwnam("nobody")


@pytest.fixture(autouse=True)
def as_root() -> None:
    assert os.geteuid() == 0, "test_nodefs needs root (chown to other users): run it as root, as CI does"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """base/{real/sub/, link -> real, file, victim/keep.txt}."""
    (tmp_path / "base" / "real" / "sub").mkdir(parents=True)
    (tmp_path / "base" / "link").symlink_to(tmp_path / "base" / "real")
    (tmp_path / "base" / "file").write_text("x")
    (tmp_path / "victim").mkdir()
    (tmp_path / "victim" / "keep.txt").write_text("keep")
    return tmp_path


@pytest.fixture
def base(tree: Path) -> Iterator[int]:
    fd = os.open(tree / "base", os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)


def victim_state(tree: Path) -> tuple[int, int, list[str]]:
    st = (tree / "victim").stat()
    return st.st_uid, stat.S_IMODE(st.st_mode), sorted(os.listdir(tree / "victim"))


OPENERS: list[Callable[[int, str], int]] = [open_beneath, walk_beneath]


@pytest.mark.parametrize("opener", OPENERS, ids=["openat2", "walk"])
@pytest.mark.parametrize(("path", "errs"), [
    ("link", {errno.ELOOP, errno.ENOTDIR}), ("link/sub", {errno.ELOOP, errno.ENOTDIR}),
    ("real/../real", {errno.EXDEV}), ("file", {errno.ENOTDIR}), ("missing", {errno.ENOENT})])
def test_open_beneath_refuses_links_and_escapes(base: int, opener: Callable[[int, str], int],
                                                path: str, errs: set[int]) -> None:
    with pytest.raises(OSError) as info:
        os.close(opener(base, path))
    assert info.value.errno in errs


@pytest.mark.parametrize("opener", OPENERS, ids=["openat2", "walk"])
def test_open_beneath_opens_real_dirs(base: int, tree: Path, opener: Callable[[int, str], int]) -> None:
    fd = opener(base, "real/sub")
    try:
        assert os.path.samestat(os.fstat(fd), (tree / "base" / "real" / "sub").stat())
    finally:
        os.close(fd)


def test_open_dir_refuses_a_link_anywhere_in_an_absolute_path(tree: Path) -> None:
    with pytest.raises(OSError):
        open_dir(tree / "base" / "link" / "sub")
    os.close(open_dir(tree / "base" / "real" / "sub"))


@pytest.mark.parametrize("name", ["link", "file"])
def test_ensure_dir_replaces_a_link_or_a_file(base: int, tree: Path, name: str) -> None:
    (tree / "base" / "link").unlink()
    (tree / "base" / "link").symlink_to(tree / "victim")
    before = victim_state(tree)
    fd = ensure_dir(base, name, 0o700, (NOBODY.pw_uid, NOBODY.pw_gid))
    os.close(fd)
    made = (tree / "base" / name).lstat()
    assert stat.S_ISDIR(made.st_mode) and stat.S_IMODE(made.st_mode) == 0o700
    assert (made.st_uid, made.st_gid) == (NOBODY.pw_uid, NOBODY.pw_gid)
    assert victim_state(tree) == before


def test_ensure_dir_keeps_an_existing_dir_and_sets_its_mode(base: int, tree: Path) -> None:
    os.close(ensure_dir(base, "real", 0o1777))
    assert stat.S_IMODE((tree / "base" / "real").stat().st_mode) == 0o1777
    assert (tree / "base" / "real" / "sub").is_dir()


def test_empty_dir_deletes_links_not_their_targets(base: int, tree: Path) -> None:
    (tree / "base" / "real" / "to-victim").symlink_to(tree / "victim")
    (tree / "base" / "real" / "sub" / "deep.txt").write_text("d")
    before = victim_state(tree)
    fd = open_beneath(base, "real")
    try:
        empty_dir(fd)
    finally:
        os.close(fd)
    assert os.listdir(tree / "base" / "real") == []
    assert victim_state(tree) == before


@pytest.mark.parametrize("plant", ["symlink", "hardlink"])
def test_create_file_never_writes_through_what_was_planted(base: int, tree: Path, plant: str) -> None:
    target = tree / "victim" / "keep.txt"
    name = tree / "base" / "stdout.txt"
    if plant == "symlink":
        name.symlink_to(target)
    else:
        os.link(target, name)
    fd = create_file(base, "stdout.txt", 0o640, (NOBODY.pw_uid, NOBODY.pw_gid))
    with open(fd, "w") as out:
        out.write("log\n")
    st = name.lstat()
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640 and st.st_uid == NOBODY.pw_uid
    assert name.read_text() == "log\n"
    assert target.read_text() == "keep" and target.stat().st_uid == 0


def test_create_file_leaves_a_directory_in_the_way(base: int, tree: Path) -> None:
    (tree / "base" / "stdout.txt").mkdir()
    with pytest.raises(IsADirectoryError):
        create_file(base, "stdout.txt", 0o640)
    assert (tree / "base" / "stdout.txt").is_dir()


def test_create_at_opens_the_parent_without_links(tree: Path) -> None:
    with pytest.raises(OSError):
        create_at(tree / "base" / "link" / "x.txt", 0o600)
    os.close(create_at(tree / "base" / "real" / "x.txt", 0o600))
    assert stat.S_IMODE((tree / "base" / "real" / "x.txt").stat().st_mode) == 0o600


# -- the trust check -------------------------------------------------------------------------

@pytest.fixture
def hostile(tmp_path: Path) -> Path:
    """A directory another user (nobody) owns, in a root-only test dir."""
    path = tmp_path / "hostile"
    path.mkdir(mode=0o755)
    os.chown(path, NOBODY.pw_uid, NOBODY.pw_gid)
    return path


@pytest.mark.parametrize(("setup", "fix"), [
    (lambda p: os.chown(p, NOBODY.pw_uid, -1), "chown root"),
    (lambda p: p.chmod(0o777), "chmod go-w"),
    (lambda p: p.chmod(0o775), "chmod go-w"),
    (lambda p: p.chmod(0o1777), "chmod go-w"),              # sticky is fine above, not as the root
])
def test_untrusted_root_is_refused(tmp_path: Path, setup: Callable[[Path], None], fix: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    setup(root)
    with pytest.raises(ConfigError) as info:
        open_trusted(root, "node root")
    message = str(info.value)
    assert "\n" not in message and str(root) in message and f"`{fix} {root}`" in message


def test_untrusted_ancestor_is_refused_and_nothing_is_created(hostile: Path) -> None:
    with pytest.raises(ConfigError, match=f"{hostile} is owned by uid {NOBODY.pw_uid} .nobody."):
        open_trusted(hostile / "a" / "b", "node root")
    assert not (hostile / "a").exists()


def test_sticky_ancestor_must_be_owned_by_root(tmp_path: Path) -> None:
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    os.close(open_trusted(sticky / "root", "node root"))   # as under /tmp
    os.chown(sticky, NOBODY.pw_uid, -1)
    with pytest.raises(ConfigError, match="owned by"):
        open_trusted(sticky / "root", "node root")


def test_a_link_in_the_path_is_refused(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(ConfigError, match="is a symbolic link"):
        open_trusted(tmp_path / "link" / "root", "node root")


def test_missing_dirs_are_created_0755_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        os.close(open_trusted(tmp_path / "a" / "b", "node root"))
    finally:
        os.umask(old)
    for path in (tmp_path / "a", tmp_path / "a" / "b"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o755 and path.stat().st_uid == 0


def test_relative_path_is_refused() -> None:
    with pytest.raises(ConfigError, match="absolute"):
        open_trusted(Path("relative/root"), "node root")
