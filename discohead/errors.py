"""The one exception type for a user's mistake, shared by ``discohead`` and the jobs in ``pipelines/``."""

from __future__ import annotations


class UsageError(Exception):
    """A problem the user fixes by changing the command line, an input file or the environment.

    Its message is one line that names the input and says what to do; the command-line
    entry points print it without a traceback and exit with code 2.
    """
