"""A base backup's tar is extracted without letting it write outside the new data directory: with tarfile's
"data" filter where Python has it (3.11.4 and later), with the same checks done by hand where it does not
(the operator image's Debian bookworm Python, 3.11.2). The hand-made path is tested here on hostile archives,
whatever this Python has."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from mlinfra.backup import postgres

Member = tuple[str, bytes | None, Callable[[tarfile.TarInfo], None] | None]


def make_tar(path: Path, members: list[Member]) -> Path:
    """``(name, data or None, tweak)``: a regular file with ``data``, else whatever ``tweak`` makes it."""
    with tarfile.open(path, "w") as tar:
        for name, data, tweak in members:
            info = tarfile.TarInfo(name)
            info.mode = 0o600
            if data is not None:
                info.size = len(data)
            if tweak is not None:
                tweak(info)
            tar.addfile(info, io.BytesIO(data) if data is not None and info.isreg() else None)
    return path


def symlink(target: str) -> Callable[[tarfile.TarInfo], None]:
    def tweak(info: tarfile.TarInfo) -> None:
        info.type, info.linkname = tarfile.SYMTYPE, target

    return tweak


def hardlink(target: str) -> Callable[[tarfile.TarInfo], None]:
    def tweak(info: tarfile.TarInfo) -> None:
        info.type, info.linkname = tarfile.LNKTYPE, target

    return tweak


def kind(type_: bytes, mode: int = 0o600) -> Callable[[tarfile.TarInfo], None]:
    def tweak(info: tarfile.TarInfo) -> None:
        info.type, info.mode = type_, mode

    return tweak


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    # The destination is one level down, so "outside" is a directory the test can look at.
    d = tmp_path / "restore" / "pgdata"
    d.mkdir(parents=True)
    return d


def outside(dest: Path) -> list[str]:
    root = dest.parent.parent
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if not p.is_relative_to(dest) and p not in (dest.parent,) and p.suffix != ".tar"
    )


@pytest.fixture(params=["fallback", "extract-without-filters"])
def extract(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Callable[[Path, Path], None]:
    """The hand-made checks: called directly, and through _extract on a Python without extraction filters."""
    if request.param == "fallback":
        return lambda tar_path, d: _checked(tar_path, d)
    monkeypatch.delattr(tarfile, "data_filter", raising=False)
    return postgres._extract


def _checked(tar_path: Path, d: Path) -> None:
    with tarfile.open(tar_path) as tar:
        postgres._extract_checked(tar, d, tar_path.name)


HOSTILE: dict[str, list[Member]] = {
    "absolute name": [("/tmp-outside-evil", b"x", None)],
    "dot-dot name": [("../evil", b"x", None)],
    "dot-dot inside a name": [("base/../../evil", b"x", None)],
    "symlink to an absolute path": [("escape", None, symlink("/etc"))],
    "symlink out of dest": [("escape", None, symlink("../.."))],
    "symlink out through a directory": [
        ("base", None, kind(tarfile.DIRTYPE, 0o700)),
        ("base/up", None, symlink("../..")),
    ],
    "file through a symlink out": [
        ("here", None, symlink(".")),
        ("here2", None, symlink("here/..")),
        ("here2/evil", b"x", None),
    ],
    "hard link to an absolute path": [("h", None, hardlink("/etc/hostname"))],
    "hard link out of dest": [("h", None, hardlink("../outside-file"))],
    "character device": [("dev", None, kind(tarfile.CHRTYPE))],
    "block device": [("blk", None, kind(tarfile.BLKTYPE))],
    "fifo": [("fifo", None, kind(tarfile.FIFOTYPE))],
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_members_are_refused_and_nothing_is_written_outside(
    case: str, dest: Path, tmp_path: Path, extract: Callable[[Path, Path], None]
) -> None:
    (tmp_path / "outside-file").write_text("the host's")
    tar_path = make_tar(tmp_path / "base.tar", HOSTILE[case])
    with pytest.raises(postgres.PostgresBackupError, match="refusing member"):
        extract(tar_path, dest)
    assert outside(dest) == ["outside-file"]
    assert (tmp_path / "outside-file").read_text() == "the host's"
    assert not Path("/tmp-outside-evil").exists()
    for p in dest.rglob("*"):  # whatever was extracted before the refusal stays inside
        assert os.path.realpath(p).startswith(str(dest.resolve()))


def test_a_base_backup_extracts_as_with_the_data_filter(
    dest: Path, tmp_path: Path, extract: Callable[[Path, Path], None]
) -> None:
    def mode(m: int) -> Callable[[tarfile.TarInfo], None]:
        def tweak(info: tarfile.TarInfo) -> None:
            info.mode, info.uid, info.gid, info.uname, info.gname = m, 4242, 4242, "nobody-here", "nobody-here"

        return tweak

    tar_path = make_tar(
        tmp_path / "base.tar",
        [
            ("backup_label", b"START WAL LOCATION: 0/2000028\n", None),
            ("base", None, kind(tarfile.DIRTYPE, 0o700)),
            ("base/1", None, kind(tarfile.DIRTYPE, 0o700)),
            ("base/1/1259", b"\0" * 8192, mode(0o600)),
            ("global/pg_control", b"ctl", mode(0o4755)),  # setuid: dropped
            ("postgresql.conf", b"# conf", mode(0o666)),  # world-writable: not any more
            ("pg_wal", None, kind(tarfile.DIRTYPE, 0o700)),
            ("pg_wal/archive_status", None, kind(tarfile.DIRTYPE, 0o700)),
            ("current_logfiles.link", None, symlink("postgresql.conf")),
            ("base/1/1259.hard", None, hardlink("base/1/1259")),
            ("readonly", b"r", mode(0o400)),  # owner read-write afterwards, as the data filter does
        ],
    )
    extract(tar_path, dest)
    assert (dest / "backup_label").read_bytes() == b"START WAL LOCATION: 0/2000028\n"
    assert (dest / "base/1/1259").read_bytes() == b"\0" * 8192
    assert os.path.samefile(dest / "base/1/1259", dest / "base/1/1259.hard")
    assert os.readlink(dest / "current_logfiles.link") == "postgresql.conf"
    modes = {name: stat.S_IMODE((dest / name).stat().st_mode) for name in ("global/pg_control", "postgresql.conf")}
    assert modes == {"global/pg_control": 0o755, "postgresql.conf": 0o644}
    assert stat.S_IMODE((dest / "readonly").stat().st_mode) == 0o600
    assert (dest / "pg_wal/archive_status").is_dir()
    owner = (dest / "base/1/1259").stat()
    assert (owner.st_uid, owner.st_gid) == (os.geteuid(), os.getegid())  # not the archive's 4242
    assert outside(dest) == []


def test_with_the_data_filter_extract_refuses_too(dest: Path, tmp_path: Path) -> None:
    if not hasattr(tarfile, "data_filter"):
        pytest.skip("this Python has no tarfile data filter")
    tar_path = make_tar(tmp_path / "base.tar", HOSTILE["symlink out of dest"])
    with pytest.raises(postgres.PostgresBackupError, match=r"base\.tar"):
        postgres._extract(tar_path, dest)
    assert not (dest / "escape").exists()
