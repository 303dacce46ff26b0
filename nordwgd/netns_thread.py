"""Run a blocking function in a thread that entered another network namespace.

setns(2) with CLONE_NEWNET moves only the calling thread: sockets that thread creates afterwards
belong to the entered namespace, while the event loop and every other thread stay where they
are. Each call gets a thread of its own that ends with the call, so no thread ever goes back to
a pool (or runs anything else) in the wrong namespace, and nothing has to be restored. The
function must bound its own run time (socket timeouts): a cancelled caller stops waiting for the
thread, not the thread itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")


def enter(path: Path) -> None:
    """Move the calling thread into the network namespace bound at ``path``; raises OSError."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            number = ctypes.get_errno()
            raise OSError(number, f"cannot enter {path}: {os.strerror(number)}")
    finally:
        os.close(fd)


async def run_in_namespace(name: str, function: Callable[[], T]) -> T:
    """``function()`` in a fresh thread inside the namespace ``/run/netns/<name>``.

    Raises OSError when the namespace cannot be entered (gone, or no CAP_SYS_ADMIN), and
    whatever ``function`` raises.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def worker() -> None:
        try:
            enter(NETNS_DIR / name)
            result = function()
        except BaseException as error:  # handed over to the awaiting task
            settle = functools.partial(_fail, future, error)
        else:
            settle = functools.partial(_succeed, future, result)
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
            loop.call_soon_threadsafe(settle)

    threading.Thread(target=worker, name=f"nordwgd-netns-{name}", daemon=True).start()
    return await future


def _succeed(future: asyncio.Future[T], result: T) -> None:
    if not future.done():  # the caller may have been cancelled meanwhile
        future.set_result(result)


def _fail(future: asyncio.Future[T], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


__all__ = ["CLONE_NEWNET", "enter", "run_in_namespace"]
