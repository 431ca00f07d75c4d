"""The command line's error policy, shared by every `svd-lab` entry point (cli/__init__.py and cli/train.py, whose
``main`` torchrun workers run): bad input is one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

DEBUG_ENV = "SVD_LAB_DEBUG"


def guarded(func: Callable[[argparse.Namespace], int], args: argparse.Namespace, prog: str, *,
            debug: bool = False) -> int:
    """``func(args)`` with the CLI's error policy: bad input (the package's errors, workflow errors, OS errors
    about the user's files) is one line on stderr and exit 2; Ctrl-C exit 130; a closed stdout (``| head``) ends
    quietly with 141. ``debug`` (or ``$SVD_LAB_DEBUG``) lets errors raise with their traceback."""
    from ..svd_model.errors import SVDError
    from ..workflow.errors import WorkflowError

    debug = debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        code = func(args)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        _discard_stdout()
        return 141
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except (SVDError, WorkflowError, OSError) as exc:
        if debug:
            raise
        print(f"{prog}: error: {_message(exc)}", file=sys.stderr)
        return 2


def _message(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        text = f"{exc.filename}: {exc.strerror}"
    return text if len(text) <= 2000 else f"{text[:2000]}… ({len(text)} characters)"


def _discard_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not report the closed pipe again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout is not a real file (captured in tests)
        pass
