"""weedseg: crop / weed / soil segmentation for field images."""

__version__ = "0.1.0"


class WeedsegError(Exception):
    """An error the user can fix; the CLI prints its message without a traceback."""
