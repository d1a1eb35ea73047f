"""Pseudo-terminal plumbing: one pty pair = one simulated RS-485 bus.

The gateway opens the *slave* side (``/dev/pts/N``) with pyserial exactly as it would open ``/dev/ttyUSB0``;
the simulator reads requests from and writes replies to the *master* fd. Details that matter:

* The slave is put in raw mode here, before anyone opens it, and the simulator keeps its own slave fd open for
  the life of the link. Otherwise the line discipline could echo or cook bytes before the gateway configures
  the port, and reading the master would fail with EIO whenever the gateway has the port closed.
* The master fd is non-blocking: when nobody drains the slave (gateway disconnected) the kernel buffer fills
  and a blocking write would hang the bus; such bytes are dropped, as on a real line with no listener.
* ``close()`` is the USB-serial adapter being unplugged: both fds close, the gateway's open fd starts failing
  with EIO (pyserial: ``OSError``/``SerialException``), and the symlink, if any, is removed. Opening again
  gives a new ``/dev/pts/M`` and re-points the symlink (atomically, like udev re-creating
  ``/dev/serial/by-id/...``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import tty
from pathlib import Path


class PtyLink:
    def __init__(self, link_path: Path | None = None) -> None:
        self.link_path = Path(link_path) if link_path else None
        self.master_fd: int | None = None
        self._slave_fd: int | None = None
        self.port: str | None = None

    @property
    def is_open(self) -> bool:
        return self.master_fd is not None

    def open(self) -> str:
        """Create a new pty pair; return the slave path (and point the symlink at it)."""
        if self.master_fd is not None:
            return self.port or ""
        master, slave = os.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        self.master_fd, self._slave_fd = master, slave
        self.port = os.ttyname(slave)
        if self.link_path is not None:
            self.link_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.link_path.with_name(f".{self.link_path.name}.{os.getpid()}.tmp")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            os.symlink(self.port, tmp)
            os.replace(tmp, self.link_path)
        return self.port

    def close(self) -> None:
        """Unplug: close both ends and remove the symlink."""
        if self.link_path is not None and self.link_path.is_symlink():
            with contextlib.suppress(OSError):
                if os.readlink(self.link_path) == self.port:
                    self.link_path.unlink()
        for fd in (self.master_fd, self._slave_fd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.master_fd = self._slave_fd = None

    def read(self, timeout: float, extra_fds: tuple[int, ...] = ()) -> bytes:
        """Bytes the gateway wrote (b"" on timeout). Also wakes when one of ``extra_fds`` is readable."""
        fds = [*extra_fds]
        if self.master_fd is not None:
            fds.append(self.master_fd)
        ready, _, _ = select.select(fds, [], [], max(0.0, timeout))
        if self.master_fd is None or self.master_fd not in ready:
            return b""
        try:
            return os.read(self.master_fd, 4096)
        except BlockingIOError:
            return b""
        except OSError as exc:
            if exc.errno == errno.EIO:
                return b""
            raise

    def write(self, data: bytes) -> int:
        """Best-effort write to the gateway; bytes that do not fit in the kernel buffer are dropped."""
        if self.master_fd is None or not data:
            return 0
        try:
            return os.write(self.master_fd, data)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as exc:
            if exc.errno == errno.EIO:
                return 0
            raise
