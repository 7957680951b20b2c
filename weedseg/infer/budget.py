"""A budget of bytes in flight, which bounds the memory of the predict pipeline whatever the input folder."""

from __future__ import annotations

import ctypes
import threading

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD = 4 << 20


class MemoryBudget:
    """Bytes held by the images being decoded, predicted or written (as the pipeline counts them from their
    headers), kept at or under `limit`.

    An image larger than the whole limit is let in only when nothing else is in flight.
    """

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0
        self._cond = threading.Condition()

    def _fits(self, amount: int) -> bool:
        return self.used == 0 or self.used + amount <= self.limit

    def try_take(self, amount: int) -> bool:
        """Reserve `amount` if it fits now; False (nothing reserved) if it does not."""
        with self._cond:
            if not self._fits(amount):
                return False
            self.used += amount
            return True

    def take(self, amount: int) -> None:
        """Reserve `amount`, waiting for `give` calls of other threads until it fits."""
        with self._cond:
            self._cond.wait_for(lambda: self._fits(amount))
            self.used += amount

    def give(self, amount: int) -> None:
        """Return an amount reserved earlier."""
        with self._cond:
            self.used -= amount
            self._cond.notify_all()


def return_freed_memory() -> None:
    """Make glibc give freed blocks of MMAP_THRESHOLD and more back to the system at once (a fixed mmap threshold).

    By default glibc raises its mmap threshold up to 32 MiB as blocks are freed, so blocks below it (Pillow
    decodes images into 16 MiB blocks) stay in the heap of whichever thread freed them: with several reader
    and writer threads the process kept about twice the memory it was using. Smaller blocks (a photo's model
    input at 640 x 480 is 3.7 MB) stay in the heap and are reused: at 1 MiB every one of them was mapped and
    its pages faulted in anew, which cost a quarter of predict's speed on one core (docs/inference.md).
    No-op where libc is not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    except (OSError, AttributeError):
        pass
