"""How the command lines report errors: one line on stderr and exit code 2; ``--verbose``
adds the traceback. A user's mistake is a ValueError whose message says what to fix; any
other exception is reported the same way, with its type."""

import sys
import traceback
from typing import Callable


def run_reporting_errors(prog: str, verbose: bool, body: Callable[[], int]) -> int:
    """``body()``'s exit code, or 2 after one line ``<prog>: error: ...`` on stderr.

    Example::

        >>> def fail() -> int:
        ...     raise ValueError("data.batch_size (0) must be a positive int\\nsecond line")
        >>> import contextlib, io
        >>> err = io.StringIO()
        >>> with contextlib.redirect_stderr(err):
        ...     code = run_reporting_errors("rankmixer-train", False, fail)
        >>> code, err.getvalue()
        (2, 'rankmixer-train: error: data.batch_size (0) must be a positive int second line\\n')
    """
    try:
        return body()
    except Exception as e:  # noqa: BLE001 - every failure becomes one line (and exit 2)
        if verbose:
            traceback.print_exc()
        message = " ".join(str(e).split())
        kind = "" if isinstance(e, ValueError) else f"{type(e).__name__}: "
        hint = "" if verbose or isinstance(e, ValueError) else " (--verbose shows the traceback)"
        print(f"{prog}: error: {kind}{message}{hint}", file=sys.stderr)
        return 2
