"""One exception type for every user-facing failure.

Library code raises `LamoError("what went wrong with <file/option>: what to do")`; the CLI turns it
into a one-line message and a non-zero exit without a traceback.
"""


class LamoError(Exception):
    """A problem the user can fix (bad path, wrong backbone, corrupt file, bad option)."""
