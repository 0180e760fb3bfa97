"""Library noise goes to the run's log file; the user's own problems still reach the terminal.

Libraries kdsearch drives talk a lot: the ONNX exporter logs progress and "torchvision is not
installed", torchao logs "Failed to load ... _C_mxfp8" at import when a kernel does not match the
machine, Optuna raises ``ExperimentalWarning``, torch logs pytree deprecations. None of it is the
user's business. :func:`capture_library_noise` sends all of it to ``RUN_DIR/kdsearch.log``; a
:class:`~kdsearch.errors.KdsearchWarning` (a problem the user can fix) is still shown on stderr,
once, as one ``warning: ...`` line. :func:`warnings_as_lines` does the same for a command without
a run directory: its library warnings go to the ``kdsearch.library_warnings`` logger (nowhere,
unless the application gives it a handler).
"""
from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from pathlib import Path
from typing import Any, Iterator, TextIO

from kdsearch.errors import KdsearchWarning

__all__ = ["LIBRARY_LOGGERS", "capture_library_noise", "warnings_as_lines"]

# Top-level loggers of the libraries kdsearch drives; their children propagate to them unless
# the library gave a child its own console handler (torch does: see _route_loggers).
LIBRARY_LOGGERS: tuple[str, ...] = ("torch", "torchao", "optuna", "onnxscript", "onnx_ir", "onnx", "onnxruntime")

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Python warnings that are not KdsearchWarnings are logged here. A NullHandler keeps them off the
# terminal when nothing else handles them (logging's last resort would print them to stderr).
_WARNINGS_LOGGER = "kdsearch.library_warnings"
logging.getLogger(_WARNINGS_LOGGER).addHandler(logging.NullHandler())

# The KdsearchWarning messages shown by the active warnings_as_lines blocks, innermost last; nested
# blocks share the outermost set, so a warning raised before and again inside a run shows once.
_shown: list[set[str]] = []


def _is_console(handler: logging.Handler) -> bool:
    stream = getattr(handler, "stream", None)
    return stream is not None and stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)


@contextlib.contextmanager
def _route_loggers(handler: logging.Handler) -> Iterator[None]:
    # Console handlers are replaced by ``handler``; other handlers (a user's own files, torch's
    # TORCH_TRACE handler) stay. torch gives many children their own stderr handler and
    # ``propagate=False``: those get ``handler`` too, or their records would be lost or printed.
    roots = [logging.getLogger(name) for name in LIBRARY_LOGGERS]
    children = [
        lg
        for name, lg in list(logging.root.manager.loggerDict.items())
        if isinstance(lg, logging.Logger) and lg.handlers and name.split(".")[0] in LIBRARY_LOGGERS and lg not in roots
    ]
    saved = [(lg, lg.handlers[:], lg.propagate, lg.level) for lg in roots + children]
    for lg in roots:
        lg.handlers = [h for h in lg.handlers if not _is_console(h)] + [handler]
        lg.propagate = False  # the application's root handlers never see library records
        if lg.level == logging.NOTSET or lg.level > logging.INFO:
            lg.setLevel(logging.INFO)  # a log file may hold INFO; DEBUG is tracing noise
    for lg in children:
        kept = [h for h in lg.handlers if not _is_console(h)]
        lg.handlers = kept + ([handler] if not lg.propagate and len(kept) < len(lg.handlers) else [])
    try:
        yield
    finally:
        for lg, handlers, propagate, level in saved:
            lg.handlers, lg.propagate = handlers, propagate
            lg.setLevel(level)


@contextlib.contextmanager
def warnings_as_lines(terminal: TextIO | None = None) -> Iterator[None]:
    """Show each :class:`KdsearchWarning` once as one ``warning: ...`` line; log other warnings.

    Args:
        terminal: where the lines go; ``sys.stderr`` at the time a warning is raised when None.

    Other warnings (torch's, Optuna's...) go to the ``kdsearch.library_warnings`` logger, whose
    records :func:`capture_library_noise` writes to the run's log. Not thread-safe: it swaps
    ``warnings.showwarning``.
    """
    shown = _shown[0] if _shown else set()
    library = logging.getLogger(_WARNINGS_LOGGER)

    def show(message: Any, category: type[Warning], filename: str, lineno: int,
             file: TextIO | None = None, line: str | None = None) -> None:
        if not issubclass(category, KdsearchWarning):
            library.warning(warnings.formatwarning(message, category, filename, lineno, line).rstrip())
            return
        text = " ".join(str(message).split())  # one line, whatever the message holds
        if text in shown:
            return
        shown.add(text)
        out = terminal if terminal is not None else sys.stderr
        out.write(f"warning: {text}\n")
        out.flush()

    _shown.append(shown)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = show
            yield
    finally:
        _shown.pop()


@contextlib.contextmanager
def capture_library_noise(log_path: Path, *, terminal: TextIO | None = None) -> Iterator[Path]:
    """Send third-party warnings and library logging to ``log_path`` for the ``with`` block.

    Args:
        log_path: the log file (appended to; its folder is created), usually ``RUN_DIR/kdsearch.log``.
        terminal: where a :class:`KdsearchWarning` is written (see :func:`warnings_as_lines`).

    Yields:
        ``log_path``. Import noisy libraries (torchao) only inside the block: some log at import.

    Not thread-safe: it swaps process-wide state (``warnings.showwarning``, logger handlers).
    """
    import torch  # noqa: F401  (torch gives its loggers console handlers at import: reroute those too)

    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(_FORMAT))
    warn_log = logging.getLogger(_WARNINGS_LOGGER)
    saved_warn = warn_log.handlers[:], warn_log.propagate
    warn_log.handlers, warn_log.propagate = [handler], False
    try:
        with warnings_as_lines(terminal), _route_loggers(handler):
            yield log_path
    finally:
        warn_log.handlers, warn_log.propagate = saved_warn
        handler.close()
