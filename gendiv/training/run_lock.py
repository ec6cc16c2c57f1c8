"""Run-folder ownership: one live process writes a run folder at a time.

A run takes ``<output_dir>/.lock`` with ``flock`` (POSIX advisory lock) and writes its pid, host and start time
into it. The kernel drops the lock when the owner exits, however it exits, so a lock that can be taken while the
file still names an owner was left by a process that died (killed, out of memory): it is reported and taken over.
A lock that cannot be taken names the live owner, and the second run is refused by name.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from ..errors import RunLockedError

LOCK_NAME = ".lock"
_HELD: dict[Path, "RunLock"] = {}  # locks this process holds, by resolved folder (a process may reopen its own run)


class RunLock:
    """The lock of one run folder, held from :meth:`acquire` until :meth:`release` (or the process's end)."""

    def __init__(self, folder: Path, handle):
        self.folder, self._handle, self.users = folder, handle, 1

    @classmethod
    def acquire(cls, folder, purpose: str = "write into it") -> "RunLock":
        """Take ``folder``'s lock (creating the folder), or raise RunLockedError naming the live owner."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        key = folder.resolve()
        if key in _HELD:
            _HELD[key].users += 1
            return _HELD[key]
        handle = open(folder / LOCK_NAME, "a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _describe(_read_owner(handle))
            handle.close()
            raise RunLockedError(f"{folder} is in use by another gendiv run ({owner}); cannot {purpose} while it runs. "
                                 "Wait for it to end or stop it, or choose another run.output_dir") from None
        previous = _read_owner(handle)
        if previous:
            print(f"note: {folder} was last owned by a run that ended without releasing it ({_describe(previous)}; "
                  "killed?); this run takes it over", file=sys.stderr)
        _write_owner(handle, {"pid": os.getpid(), "host": socket.gethostname(),
                              "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")})
        lock = _HELD[key] = cls(folder, handle)
        return lock

    def moved_to(self, folder: Path):
        """The locked folder is about to be renamed to ``folder`` (the lock file moves with it)."""
        _HELD.pop(self.folder.resolve(), None)
        self.folder = Path(folder)
        _HELD[self.folder.resolve()] = self

    def release(self):
        """Give the folder up: the owner record is cleared (a clean end), then the lock is dropped."""
        self.users -= 1
        if self.users > 0 or self._handle.closed:
            return
        for key in [k for k, v in _HELD.items() if v is self]:
            del _HELD[key]
        _write_owner(self._handle, None)
        fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
        self._handle.close()


def _read_owner(handle) -> dict | None:
    handle.seek(0)
    text = handle.read().strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return {"unreadable": text[:80]}


def _write_owner(handle, owner: dict | None):
    handle.seek(0)
    handle.truncate()
    if owner is not None:
        handle.write(json.dumps(owner))
    handle.flush()
    os.fsync(handle.fileno())


def _describe(owner: dict | None) -> str:
    if not owner:
        return "owner not yet recorded"
    if "pid" not in owner:
        return f"owner record {owner}"
    return f"pid {owner['pid']} on host {owner.get('host', '?')}, started {owner.get('started', '?')}"
