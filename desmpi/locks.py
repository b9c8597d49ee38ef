"""Advisory locks on the directories a run writes (``--out``, ``checkpoint.dir``).

A second job on the same directory fails at once, naming the host and pid of the holder,
instead of interleaving its metrics and checkpoints with the first's. The lock is ``flock`` on
``DIR/.desmpi.lock`` (released by the kernel when the holder dies, however it dies); on network
file systems it holds only where the file system implements flock across hosts.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from desmpi.errors import UserError

LOCK_NAME = ".desmpi.lock"


class LockedError(UserError):
    """The directory is in use by another run; the message names it."""


class DirLock:
    """``with DirLock(path, "--out"):`` holds the directory's lock (it is created if needed)."""

    def __init__(self, directory: str | Path, what: str) -> None:
        self.dir, self.what = Path(directory), what
        self._f = None

    def acquire(self) -> DirLock:
        self.dir.mkdir(parents=True, exist_ok=True)
        f = open(self.dir / LOCK_NAME, "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip()
            f.close()
            try:
                h = json.loads(holder)
                who = f"host {h['host']}, pid {h['pid']}, since {h['since']}"
            except (ValueError, KeyError, TypeError):
                who = "holder unknown"
            raise LockedError(f"{self.what} {self.dir} is in use by another desmpi run ({who}); "
                              "wait for it to end or choose another directory") from None
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                            "since": time.strftime("%Y-%m-%d %H:%M:%S")}))
        f.flush()
        self._f = f
        return self

    def release(self) -> None:
        if self._f is not None:
            fcntl.flock(self._f.fileno(), fcntl.LOCK_UN)
            self._f.close()
            self._f = None

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
