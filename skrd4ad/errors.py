"""The error policy shared by the command line and the stage scripts: which exceptions carry a
message written for the user, and the one line that shows any exception.

>>> format_error(ParamsError("invalid params:\n  train.lr: -1 is less than the minimum of 0"))
'invalid params: train.lr: -1 is less than the minimum of 0'
"""

from __future__ import annotations

import errno


class ParamsError(ValueError):
    """A params file is invalid; the message names the file or key and the problem."""


#: Exceptions whose message is written for the user (it names the file or key and the fix):
#: shown as it is; any other exception is shown with its type name (probably a bug).
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, RuntimeError, ArithmeticError, EOFError)


def format_error(exc: BaseException) -> str:
    """One line describing ``exc`` for the user (no traceback), shared by the CLI and the stage
    scripts: its message with line breaks folded into ``; ``, hints for a full disk or memory,
    and the exception type for unexpected errors."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT) and str(exc).startswith(
            ("no space left on device while writing", "disk quota exceeded while writing")):  # io.DiskFullError
        return f"{exc}: free some disk space (or write the outputs elsewhere) and run again"
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" writing {exc.filename}" if exc.filename else ""
        return f"no space left on device{where}: free some disk space (or write the outputs elsewhere) and run again"
    if isinstance(exc, MemoryError):
        return "out of memory: lower batch_size (or image_size), or close other programs"
    if type(exc).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError, without importing torch
        first = str(exc).strip().split(". ")[0]
        return f"{first}: lower batch_size, use amp bf16, or free the GPU"
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        text = f"KeyError: missing key {exc.args[0]!r}"
    else:
        text = str(exc).strip() or type(exc).__name__
        if not isinstance(exc, USER_ERRORS):
            text = f"{type(exc).__name__}: {text}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):  # "invalid params:\n  a: ...\n  b: ..."
        lines = [f"{lines[0]} {lines[1]}", *lines[2:]]
    return "; ".join(lines)


def refused_load(exc: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in one clause.  Torch's own message
    advises re-running with ``weights_only=False``: unsafe for a file that names other Python
    objects (it may run code when unpickled), useless for a damaged one; it is never passed on."""
    text = str(exc)
    if "Weights only load failed" not in text and "weights_only" not in text:
        first = (text.strip().splitlines() or [""])[0].split(". ")[0].strip()
        return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    if "Unsupported global" in text:
        return ("it holds Python objects besides tensors (a pickle that could run code when loaded), so it was "
                "not loaded; use weights from a source you trust")
    after = text.split("WeightsUnpickler error:", 1)[1] if "WeightsUnpickler error:" in text else ""
    detail = next((line.strip() for line in after.splitlines() if line.strip()), "")  # e.g. "Unsupported operand 103"
    return f"it is damaged or not a PyTorch weights file ({detail or 'not a valid pickle'})"
