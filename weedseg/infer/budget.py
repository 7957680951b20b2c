"""A budget of pixels in flight, which bounds the memory of the predict pipeline whatever the input folder."""

from __future__ import annotations

import ctypes
import threading

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


class PixelBudget:
    """Pixels of the images being decoded, predicted or written, kept at or under `limit`.

    An image larger than the whole limit is let in only when nothing else is in flight.
    """

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0
        self._cond = threading.Condition()

    def _fits(self, pixels: int) -> bool:
        return self.used == 0 or self.used + pixels <= self.limit

    def try_take(self, pixels: int) -> bool:
        """Reserve `pixels` if they fit now; False (nothing reserved) if they do not."""
        with self._cond:
            if not self._fits(pixels):
                return False
            self.used += pixels
            return True

    def take(self, pixels: int) -> None:
        """Reserve `pixels`, waiting for `give` calls of other threads until they fit."""
        with self._cond:
            self._cond.wait_for(lambda: self._fits(pixels))
            self.used += pixels

    def give(self, pixels: int) -> None:
        """Return pixels reserved earlier."""
        with self._cond:
            self.used -= pixels
            self._cond.notify_all()


def return_freed_memory() -> None:
    """Make glibc give freed blocks of 1 MiB and more back to the system at once (a fixed mmap threshold).

    By default glibc raises its mmap threshold up to 32 MiB as blocks are freed, so blocks below it (Pillow
    decodes images into 16 MiB blocks) stay in the heap of whichever thread freed them: with several reader
    and writer threads the process kept about twice the memory it was using. No-op where libc is not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, 1 << 20)
    except (OSError, AttributeError):
        pass
