"""What the job scripts share on the driver side: usage errors, S3 options, the exit codes.

Only the driver uses this module; nothing in it is shipped to Ray workers.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any


class UsageError(Exception):
    """A problem the user fixes by changing the command line or the environment."""


def s3_options(url: str, endpoint: str | None = None) -> dict[str, Any]:
    """fsspec options for an s3:// URL: the endpoint only (``endpoint`` or AWS_ENDPOINT_URL).

    Credentials stay in the standard AWS environment of every node, so they never travel
    with a job or appear in its logs.
    """
    endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL")
    return {"client_kwargs": {"endpoint_url": endpoint}} if url.startswith("s3://") and endpoint else {}


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
