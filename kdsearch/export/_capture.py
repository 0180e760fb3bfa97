"""Keep the chatter of exporters and runtimes off the terminal, and keep it for a log file.

``torch.onnx.export`` prints progress lines, logs "torchvision is not installed", and raises
warnings; ONNX Runtime's C++ logger writes straight to file descriptor 2. :func:`captured_output`
catches all four channels (Python stdout/stderr, file descriptors 1/2, ``warnings``, ``logging``)
so the library stays silent and the CLI can write the text to ``export.log``.
"""
from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from typing import Iterator

__all__ = ["Captured", "captured_output"]

# Top-level loggers of the libraries the export stage drives; their children propagate to them.
_LOGGER_ROOTS = ("torch", "onnxscript", "onnx_ir", "onnx", "onnxruntime", "torchao")


@dataclass
class Captured:
    """Text gathered by :func:`captured_output`; complete once the ``with`` block exits."""

    text: str = ""
    lines: list[str] = field(default_factory=list)


class _ListHandler(logging.Handler):
    def __init__(self, lines: list[str]) -> None:
        super().__init__(level=logging.INFO)  # DEBUG is tracing noise
        self.lines = lines
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def _flush_c_stdio() -> None:
    # Text a C library buffered must land in our file, not after the descriptors are restored.
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).fflush(None)


@contextlib.contextmanager
def _redirect_fds(target: int) -> Iterator[None]:
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        with contextlib.suppress(Exception):
            stream.flush()
    saved: list[tuple[int, int]] = []
    try:
        for fd in (1, 2):
            try:
                saved.append((fd, os.dup(fd)))
            except OSError:  # no such descriptor (a detached process): nothing to redirect
                continue
            os.dup2(target, fd)
        yield
    finally:
        _flush_c_stdio()
        for fd, copy in saved:
            os.dup2(copy, fd)
            os.close(copy)


def _is_console(handler: logging.Handler) -> bool:
    stream = getattr(handler, "stream", None)
    return stream is not None and stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)


@contextlib.contextmanager
def _swap_logging(handler: logging.Handler) -> Iterator[None]:
    # Console handlers are swapped for ``handler``; file handlers (and torch's TORCH_TRACE one, which
    # has no stream until it opens its file) are left alone so a user's own logging still works.
    saved: list[tuple[logging.Logger, list[logging.Handler], bool]] = []
    roots = [logging.getLogger(name) for name in _LOGGER_ROOTS]
    children = [
        obj
        for name, obj in list(logging.root.manager.loggerDict.items())
        if isinstance(obj, logging.Logger) and obj.handlers and name.split(".")[0] in _LOGGER_ROOTS and obj not in roots
    ]
    for lg in roots + children:
        saved.append((lg, lg.handlers[:], lg.propagate))
        kept = [h for h in lg.handlers if not _is_console(h)]
        is_root = lg in roots
        # A child that propagates reaches its root's capture handler; one that does not needs its own.
        lg.handlers = kept + ([handler] if is_root or (not lg.propagate and len(kept) < len(lg.handlers)) else [])
        if is_root:
            lg.propagate = False  # keep these records away from the application's root handlers
    try:
        yield
    finally:
        for lg, handlers, propagate in saved:
            lg.handlers = handlers
            lg.propagate = propagate


@contextlib.contextmanager
def captured_output() -> Iterator[Captured]:
    """Capture stdout, stderr (Python and file-descriptor level), warnings and library logging.

    Not thread-safe: it swaps process-wide state (file descriptors, logger handlers) for the
    duration of the block. The text is available on the yielded object even if the block raises.
    """
    result = Captured()
    py_text = io.StringIO()
    log_lines: list[str] = []
    with tempfile.TemporaryFile(mode="w+b") as fd_file:
        try:
            with (
                warnings.catch_warnings(record=True) as caught,
                _swap_logging(_ListHandler(log_lines)),
                _redirect_fds(fd_file.fileno()),
                contextlib.redirect_stdout(py_text),
                contextlib.redirect_stderr(py_text),
            ):
                warnings.simplefilter("always")
                yield result
        finally:
            fd_file.seek(0)
            fd_text = fd_file.read().decode("utf-8", errors="replace")
            warn_lines = [
                warnings.formatwarning(w.message, w.category, w.filename, w.lineno, None).rstrip() for w in caught
            ]
            for chunk in (py_text.getvalue(), fd_text, "\n".join(log_lines), "\n".join(warn_lines)):
                result.lines.extend(line for line in chunk.splitlines() if line.strip())
            result.text = "\n".join(result.lines) + ("\n" if result.lines else "")
