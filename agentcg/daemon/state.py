"""The daemon's small crash-safe state: one JSON file per session and per call, in a
private directory.

cgroupfs is the source of truth for what exists; these files add what cgroupfs
cannot hold (owners, tokens, intents) so a restarted daemon can re-authorize
the agents that reconnect. One file per record keeps every change O(1) however
many calls run. Each write is atomic (tmp file, rename). No fsync: the records
must survive a daemon crash, which the page cache does; after a reboot there are
no calls left to recover.

Whoever can write these records controls the daemon, so the directory is the
daemon's alone: created 0700, checked at start (owned by us, no group or other
access, reached without symlinks, every parent owned by root and not writable by
others), never the socket's directory, and every file is opened relative to a
directory fd with O_NOFOLLOW; temp files are created with O_EXCL. Records are
validated on load (agentcg.core.records) and rejected with a reason otherwise.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import stat
from pathlib import Path
from typing import Any

from agentcg.core.errors import AgentcgError
from agentcg.core.records import check_record

FORMAT = 2
KINDS = ("sessions", "calls", "anchors")
MAX_RECORD = 1 << 20  # a record is a few hundred bytes; anything huge is not ours
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", re.ASCII)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class StateDirError(AgentcgError):
    def __init__(self, message: str) -> None:
        super().__init__("unavailable", message)


def open_private_dir(path: Path) -> int:
    """Open (creating it 0700 if missing) the daemon's private directory `path`."""
    return open_checked_dir(path, private=True)


def open_checked_dir(path: Path, private: bool) -> int:
    """Open directory `path`, creating what is missing (the last component 0700 if
    private, else 0755), walking from / without following symlinks; refuse it unless
    we own it and nobody else can write it (private: nobody else can even read it), and
    every parent is root's and not writable by others (or sticky)."""
    if not path.is_absolute():
        raise StateDirError(f"{path} must be an absolute path")
    me = os.geteuid()
    fd = os.open("/", _DIR_FLAGS)
    parts = path.parts[1:]
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            here = "/" + "/".join(parts[: i + 1])
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o700 if last and private else 0o755, dir_fd=fd)
            try:
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise StateDirError(
                        f"{here} is a symlink or not a directory; the daemon's directories "
                        "must be reached through real directories: remove it or pick another"
                    ) from None
                raise StateDirError(f"cannot open {here}: {e.strerror}") from None
            os.close(fd)
            fd = nxt
            st = os.fstat(fd)
            mode = stat.S_IMODE(st.st_mode)
            if last:
                if st.st_uid != me or mode & (0o077 if private else 0o022):
                    want = "0700" if private else "0755 or tighter"
                    raise StateDirError(
                        f"{here} must be owned by uid {me} with mode {want} (found uid "
                        f"{st.st_uid}, mode {mode:04o}): others could plant files in it; "
                        f"fix it with chown {me} and chmod {want.split()[0]}"
                    )
            elif st.st_uid not in (0, me) or (mode & 0o022 and not mode & stat.S_ISVTX):
                raise StateDirError(
                    f"{here} (a parent of {path}) is writable by others or not owned by "
                    "root, who could swap what is below it: pick another directory"
                )
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_separate(state_dir: Path, socket: Path) -> None:
    """The socket's directory is what agents (and containers) get; state must not be in it."""
    sock_dir = Path(os.path.normpath(socket.parent))
    state = Path(os.path.normpath(state_dir))
    if state == sock_dir or state.is_relative_to(sock_dir) or sock_dir.is_relative_to(state):
        raise StateDirError(
            f"state_dir {state} and the socket's directory {sock_dir} overlap; agents get the "
            "socket's directory, so keep state elsewhere (e.g. /var/lib/agentcg)"
        )


class State:
    def __init__(self, directory: Path) -> None:
        self.base = directory
        self.dir = directory / f"state.v{FORMAT}"
        self.base_fd: int | None = None
        self._fds: dict[str, int] = {}

    def open(self) -> int:
        """Check and open the private directory (once); its fd, for the daemon lock."""
        if self.base_fd is None:
            self.base_fd = open_private_dir(self.base)
            top = self._subdir(self.base_fd, self.dir.name)
            try:
                for kind in KINDS:
                    self._fds[kind] = self._subdir(top, kind)
            finally:
                os.close(top)
        return self.base_fd

    @staticmethod
    def _subdir(parent: int, name: str) -> int:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o700, dir_fd=parent)
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
        except OSError as e:
            raise StateDirError(
                f"state record directory {name} is a symlink or unreadable ({e.strerror}); "
                "remove it"
            ) from None
        st = os.fstat(fd)
        if st.st_uid != os.geteuid() or st.st_mode & 0o077:
            os.close(fd)
            raise StateDirError(f"state record directory {name} is not private (0700); remove it")
        return fd

    def close(self) -> None:
        for fd in [*self._fds.values(), *([self.base_fd] if self.base_fd is not None else [])]:
            os.close(fd)
        self._fds.clear()
        self.base_fd = None

    def _fd(self, kind: str) -> int:
        self.open()
        return self._fds[kind]

    def load(self) -> tuple[dict[str, dict[str, Any]], list[str]]:
        """All valid records by kind, and one line per record rejected (and why).
        Leftover temp files of an interrupted write are removed."""
        found: dict[str, dict[str, Any]] = {kind: {} for kind in KINDS}
        rejected: list[str] = []
        for kind in KINDS:
            fd = self._fd(kind)
            for entry in sorted(os.listdir(fd)):
                if entry.startswith(".") and entry.endswith(".tmp"):
                    with contextlib.suppress(OSError):
                        os.unlink(entry, dir_fd=fd)
                    continue
                name = entry.removesuffix(".json")
                if name == entry or not _NAME_RE.fullmatch(name):
                    rejected.append(f"{self.dir / kind / entry}: not a record name")
                    continue
                try:
                    record = json.loads(self._read(fd, entry))
                except (OSError, ValueError) as e:
                    # A torn or foreign file must not stop recovery: cgroupfs still says
                    # what exists; this record's owner just cannot be re-authorized.
                    rejected.append(f"{self.dir / kind / entry}: {e}")
                    continue
                reason = check_record(kind, name, record)
                if reason:
                    rejected.append(f"{self.dir / kind / entry}: {reason}")
                    continue
                found[kind][name] = record
        return found, rejected

    @staticmethod
    def _read(dir_fd: int, entry: str) -> bytes:
        fd = os.open(
            entry, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd
        )
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
                raise ValueError("not a regular file of ours")
            if st.st_size > MAX_RECORD:
                raise ValueError(f"larger than {MAX_RECORD} bytes")
            return os.read(fd, MAX_RECORD + 1)
        finally:
            os.close(fd)

    def put(self, kind: str, name: str, record: dict[str, Any]) -> None:
        if not _NAME_RE.fullmatch(name):
            raise ValueError(f"not a record name: {name!r}")
        fd = self._fd(kind)
        tmp = f".{name}.{secrets.token_hex(4)}.tmp"
        out = os.open(
            tmp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=fd,
        )
        try:
            os.write(out, json.dumps(record).encode())
        except BaseException:
            os.unlink(tmp, dir_fd=fd)
            raise
        finally:
            os.close(out)
        # rename replaces whatever has the final name (even a planted symlink) without
        # following it.
        os.replace(tmp, f"{name}.json", src_dir_fd=fd, dst_dir_fd=fd)

    def drop(self, kind: str, name: str) -> None:
        if not _NAME_RE.fullmatch(name):
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{name}.json", dir_fd=self._fd(kind))
