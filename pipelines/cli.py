"""What the job scripts share on the driver side: usage errors, the exit codes and the multi-node check.

Only the driver uses this module; nothing in it is shipped to Ray workers.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from discohead.errors import UsageError
from discohead.storage import shared_storage_problem
from pipelines.console import quiet

__all__ = ["UsageError", "refuse_node_local_paths", "run_job"]


def run_job(name: str, run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a job; a user's mistake ends it with one line and exit code 2, not a traceback."""
    quiet(getattr(args, "verbose", False))  # before MLflow or Ray print anything
    try:
        return run(args)
    except UsageError as error:  # raised in a Ray task (one variant of --variant all), Ray wraps it: its cause
        print(f"[{name}] error: {getattr(error, 'cause', None) or error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"[{name}] interrupted", file=sys.stderr)
        return 130
    except OSError as error:
        print(f"[{name}] error: {error} (check the paths, bucket, endpoint and credentials)", file=sys.stderr)
        return 2


def refuse_node_local_paths(
    paths: dict[str, str], tracking_uri: str | None, shared: bool, needs: dict[str, float] | None = None
) -> None:
    """Stop a job (Ray initialised, no worker started) that would keep its data on one node of several.

    The job runs on several nodes when the cluster has more than one now, or when the driver's
    node lacks the resources its workers ``needs``: an autoscaling cluster that starts from its
    head alone puts them on nodes it has yet to add.
    """
    import ray

    alive = [node for node in ray.nodes() if node["Alive"]]
    here = ray.get_runtime_context().get_node_id()
    resources = next((node["Resources"] for node in alive if node["NodeID"] == here), {})
    elsewhere = any(resources.get(name, 0) < amount for name, amount in (needs or {}).items() if amount)
    if problem := shared_storage_problem(max(len(alive), 2 if elsewhere else 1), paths, tracking_uri, shared):
        raise UsageError(problem)
