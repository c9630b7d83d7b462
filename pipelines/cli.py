"""What the job scripts share on the driver side: usage errors and the exit codes.

Only the driver uses this module; nothing in it is shipped to Ray workers.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from discohead.errors import UsageError

__all__ = ["UsageError", "run_job"]


def run_job(name: str, run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a job; a user's mistake ends it with one line and exit code 2, not a traceback."""
    try:
        return run(args)
    except UsageError as error:
        print(f"[{name}] error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"[{name}] error: {error} (check the paths, bucket, endpoint and credentials)", file=sys.stderr)
        return 2
