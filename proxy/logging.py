"""structlog configuration: JSON lines for machines, a console renderer for people.

Every request writes two lines (``authorization`` and ``access``), so the JSON path is
kept lean: one processor adds the request context, level and timestamp; the line is
rendered with orjson when it is installed; the front's lines are rendered once per
remembered request head (:class:`PreparedLine`); and lines written while the event loop
is busy are gathered into one ``write()`` when the turn's callbacks run, instead of one
write and flush per line (to a regular file, one write whatever the size; to a pipe,
whole lines in pieces of at most PIPE_BUF). Outside a running loop (the CLI, other
threads) a line is written at once, and whatever is still gathered at exit is written
then. Console lines take the same writer, so workers sharing a terminal never mix lines.
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import functools
import json
import logging
import os
import select
import stat
import sys
import threading
import time
from collections.abc import Callable, Mapping, MutableMapping
from typing import IO, Any

import structlog
from structlog.contextvars import STRUCTLOG_KEY_PREFIX, STRUCTLOG_KEY_PREFIX_LEN

try:  # optional: about five times faster than the standard library's encoder
    import orjson
except ImportError:  # pragma: no cover - exercised only where orjson is missing
    orjson = None  # type: ignore[assignment]

_LEVELS = {"debug": 10, "info": 20, "warning": 30, "warn": 30, "error": 40}
_LEVEL_NAMES = {"exception": "error", "warn": "warning"}


class _Clock:
    """ISO 8601 UTC timestamps as ``TimeStamper(fmt="iso", utc=True)`` writes them, with
    the date and time of day formatted once per second instead of once per line."""

    __slots__ = ("prefix", "prefix_bytes", "second")

    def __init__(self) -> None:
        self.second = -1
        self.prefix = ""
        self.prefix_bytes = b""

    def _second(self, second: int) -> None:
        self.second = second
        self.prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        self.prefix_bytes = self.prefix.encode()

    def _micro(self) -> int:
        """The microseconds of the current second, with the prefix made for it."""
        second, micro = divmod(time.time_ns() // 1000, 1_000_000)
        if second != self.second:
            self._second(second)
        return micro

    def stamp(self) -> str:
        micro = self._micro()
        if micro == 0:  # datetime.isoformat() leaves out a zero fraction
            return self.prefix + "Z"
        return f"{self.prefix}.{micro:06d}Z"

    def stamp_bytes(self) -> bytes:
        """``stamp().encode()``, formatted as bytes directly."""
        micro = self._micro()
        if micro == 0:
            return self.prefix_bytes + b"Z"
        return b"%s.%06dZ" % (self.prefix_bytes, micro)


_CLOCK = _Clock()
_get_ident = threading.get_ident


# structlog keeps one ContextVar per key bound with bind_contextvars(); reading those
# few directly is much cheaper than copying and walking the whole context per line.
_BOUND: dict[str, contextvars.ContextVar[Any]] | None = getattr(
    structlog.contextvars, "_CONTEXT_VARS", None
)


class _Bound:
    """The context variables structlog has made for bound keys, with their output
    names; rebuilt only when a new key has been bound since."""

    __slots__ = ("count", "pairs")

    def __init__(self) -> None:
        self.count = -1
        self.pairs: tuple[tuple[str, contextvars.ContextVar[Any]], ...] = ()

    def current(
        self, registry: dict[str, contextvars.ContextVar[Any]]
    ) -> tuple[tuple[str, contextvars.ContextVar[Any]], ...]:
        if len(registry) != self.count:
            items = list(registry.items())  # another thread may be binding a new key
            self.pairs = tuple((name[STRUCTLOG_KEY_PREFIX_LEN:], var) for name, var in items)
            self.count = len(items)
        return self.pairs


_BOUND_VARS = _Bound()


def add_context(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """``merge_contextvars``, ``add_log_level`` and ``TimeStamper`` in one step, with the
    same keys."""
    if _BOUND is not None:
        for name, var in _BOUND_VARS.current(_BOUND):
            value = var.get(Ellipsis)
            if value is not Ellipsis and name not in event_dict:
                event_dict[name] = value
    else:  # pragma: no cover - a structlog without the registry
        for var, value in contextvars.copy_context().items():
            name = var.name
            if name.startswith(STRUCTLOG_KEY_PREFIX) and value is not Ellipsis:
                event_dict.setdefault(name[STRUCTLOG_KEY_PREFIX_LEN:], value)
    event_dict["level"] = _LEVEL_NAMES.get(method_name, method_name)
    event_dict["timestamp"] = _CLOCK.stamp()
    return event_dict


def _fallback(value: Any) -> Any:
    # What structlog's JSONRenderer does for values JSON has no type for.
    return repr(value)


def _stdlib_json(event_dict: MutableMapping[str, Any]) -> bytes:
    return json.dumps(event_dict, default=_fallback).encode("utf-8", "surrogateescape")


_OPTIONS = orjson.OPT_NON_STR_KEYS if orjson is not None else 0
if orjson is not None:

    def render_json(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> bytes:
        try:
            return orjson.dumps(event_dict, default=_fallback, option=_OPTIONS)
        except (TypeError, orjson.JSONEncodeError):
            # Integers beyond 64 bits, lone surrogates: the standard library copes.
            return _stdlib_json(event_dict)

else:  # pragma: no cover

    def render_json(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> bytes:
        return _stdlib_json(event_dict)


_ATOMIC_WRITE = select.PIPE_BUF


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class LineWriter:
    """A structlog logger writing one line per call to a binary stream.

    Inside the thread running an asyncio loop, lines are gathered and written together
    when the loop next gets to its callbacks (before it looks for I/O again); anywhere
    else each line is written and flushed at once.
    """

    def __init__(self, stream: IO[bytes], fallback: IO[str]) -> None:
        self._stream = stream
        self._fallback = fallback  # a text stream without a binary buffer (tests)
        self._pending: list[bytes] = []
        self._scheduled: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = 0
        self._regular_fd = -1
        self._regular = False
        atexit.register(self.flush)

    def msg(self, message: bytes | str) -> None:
        self.line((message if isinstance(message, bytes) else message.encode()) + b"\n")

    def line(self, line: bytes) -> None:
        """Write ``line``, which ends with its newline."""
        # asyncio.get_running_loop() costs a getpid() system call on Python 3.11: the loop
        # seen last is reused while it runs in this same thread (only one loop can).
        loop = self._loop
        if loop is None or self._thread != _get_ident() or not loop.is_running():
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            self._loop, self._thread = loop, _get_ident()
        with self._lock:
            pending = self._pending
            pending.append(line)
            if loop is None or len(pending) >= 256:
                self._write()
                return
            # Per loop: a loop closed before its flush ran must not hold later lines back.
            if self._scheduled is loop:
                return
            self._scheduled = loop
        # At the end of this loop turn: a line is on disk (or in the pipe) before the loop
        # waits for I/O again, so whoever got the response can already read its line.
        loop.call_soon(self.flush)

    def flush(self) -> None:
        with self._lock:
            self._scheduled = None
            self._write()

    def _write(self) -> None:
        if not self._pending:
            return
        lines = self._pending
        self._pending = []
        try:
            fd = self._stream.fileno()
        except (OSError, ValueError, AttributeError):
            fd = None
        try:
            if fd is None:
                self._stream.write(b"".join(lines))
                self._stream.flush()
                return
            self._stream.flush()
            if self._regular_file(fd):
                # A write to a regular file lands whole at the end (the kernel holds the
                # file position across one write), whatever its size and however many
                # workers share the file: one system call for everything gathered.
                _write_all(fd, b"".join(lines))
                return
            # Workers share one stderr: a write of at most PIPE_BUF bytes reaches a pipe in
            # one piece, so whole lines are grouped up to that size and never split.
            chunk: list[bytes] = []
            size = 0
            for line in lines:
                if chunk and size + len(line) > _ATOMIC_WRITE:
                    _write_all(fd, b"".join(chunk))
                    chunk, size = [], 0
                chunk.append(line)
                size += len(line)
            if chunk:
                _write_all(fd, b"".join(chunk))
        except (OSError, ValueError):
            pass  # a closed or broken log stream must not fail the request that logs

    def _regular_file(self, fd: int) -> bool:
        if self._regular_fd != fd:
            try:
                self._regular = stat.S_ISREG(os.fstat(fd).st_mode)
            except OSError:
                self._regular = False
            self._regular_fd = fd
        return self._regular

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


class _TextWriter(LineWriter):
    """For a text stream with no binary buffer underneath (e.g. ``io.StringIO``)."""

    def _write(self) -> None:
        if not self._pending:
            return
        data = b"".join(self._pending).decode("utf-8", "replace")
        self._pending.clear()
        try:
            self._fallback.write(data)
            self._fallback.flush()
        except (OSError, ValueError):
            pass


class FastBoundLogger(structlog.BoundLoggerBase):
    """``make_filtering_bound_logger`` with the event built in one call frame: structlog's
    own path goes through three frames and keyword re-packing per line."""

    min_level = 20

    def _emit(self, name: str, event: str, args: tuple[Any, ...], kw: dict[str, Any]) -> Any:
        event_dict: Any = self._context.copy()
        if kw:
            event_dict.update(kw)
        event_dict["event"] = event % args if args else event
        logger = self._logger
        for proc in self._processors:
            event_dict = proc(logger, name, event_dict)
        return logger.msg(event_dict)

    def debug(self, event: str, *args: Any, **kw: Any) -> Any:
        return None if self.min_level > 10 else self._emit("debug", event, args, kw)

    def info(self, event: str, *args: Any, **kw: Any) -> Any:
        return None if self.min_level > 20 else self._emit("info", event, args, kw)

    def warning(self, event: str, *args: Any, **kw: Any) -> Any:
        return None if self.min_level > 30 else self._emit("warning", event, args, kw)

    warn = warning

    def error(self, event: str, *args: Any, **kw: Any) -> Any:
        return None if self.min_level > 40 else self._emit("error", event, args, kw)

    def exception(self, event: str, *args: Any, **kw: Any) -> Any:
        if self.min_level > 40:
            return None
        kw.setdefault("exc_info", True)
        return self._emit("exception", event, args, kw)

    def critical(self, event: str, *args: Any, **kw: Any) -> Any:
        return self._emit("critical", event, args, kw)

    fatal = critical

    def msg(self, event: str, *args: Any, **kw: Any) -> Any:
        return self.info(event, *args, **kw)


_format_exc_info = structlog.processors.format_exc_info


class JsonBoundLogger(FastBoundLogger):
    """The JSON configuration's logger: its processors (``add_context``,
    ``format_exc_info``, ``render_json``) run in this one frame instead of structlog's
    processor loop, since every request writes two lines. Any other processor chain
    (configured elsewhere) takes the general path."""

    def _emit(self, name: str, event: str, args: tuple[Any, ...], kw: dict[str, Any]) -> Any:
        if self._processors is not _JSON_CHAIN:
            return super()._emit(name, event, args, kw)
        context = self._context
        event_dict: Any = {**context, **kw} if context else kw  # kw is this call's own
        event_dict["event"] = event % args if args else event
        event_dict = add_context(None, name, event_dict)
        if "exc_info" in event_dict:
            event_dict = _format_exc_info(None, name, event_dict)
        if orjson is not None:
            try:
                line = orjson.dumps(event_dict, default=_fallback, option=_OPTIONS)
            except (TypeError, orjson.JSONEncodeError):
                line = _stdlib_json(event_dict)
        else:  # pragma: no cover
            line = _stdlib_json(event_dict)
        return self._logger.msg(line)


_JSON_CHAIN: list[Any] = [add_context, _format_exc_info, render_json]


class PreparedLine:
    """An info line written for many requests whose fields are all known ahead but the
    request id and a few ``tail`` values: the known part is rendered once.

    ``line.info(logger, rid, **tail)`` writes exactly what
    ``logger.info(event, request_id=rid, **fields, **tail)`` writes (same keys, same
    order, the bound context, level and timestamp); ``line.emit(logger, rid, *values)``
    does the same for the ``tail`` names declared at construction, filling one bytes
    template in a single C call. Whenever that equivalence is not certain (another
    configuration, a logger with bound values, a value orjson cannot render, a context
    key named like the level or the time) it calls ``logger.info`` itself.
    """

    __slots__ = (
        "event",
        "fields",
        "known",
        "middle",
        "ready",
        "suffix",
        "tail",
        "tail_keys",
        "template",
    )

    def __init__(self, event: str, fields: Mapping[str, Any], tail: tuple[str, ...] = ()) -> None:
        self.event = event
        self.fields = dict(fields)
        self.known = {"request_id", "event", *self.fields}
        # The names emit() takes values for, in order, with their rendered keys.
        self.tail = tail
        self.tail_keys = tuple(_json_key(name) for name in tail) if orjson is not None else ()
        # The fields as ',"name":value,...' (orjson renders a dict item by item, in
        # order); None: not renderable by orjson, every line takes the general path.
        self.middle: bytes | None = None
        self.suffix = b""
        self.template = b""
        # The logger emit() last found it may write for: a bound logger's class, level,
        # processors, context and writer do not change, so they are checked once.
        self.ready: Any = None
        if orjson is not None:
            try:
                rendered = orjson.dumps(self.fields, option=_OPTIONS)[1:-1]
                self.suffix = b',"event":' + orjson.dumps(event)
            except (TypeError, orjson.JSONEncodeError):
                return
            self.middle = b"," + rendered if rendered else b""
            # The whole line with a %s for the request id, each tail value, the bound
            # context and the timestamp: one C call renders it.
            self.template = (
                b'{"request_id":%s'
                + _escaped(self.middle)
                + b"".join(_escaped(key) + b"%s" for key in self.tail_keys)
                + _escaped(self.suffix)
                + b'%s,"level":"info","timestamp":"%s"}\n'
            )

    def info(self, logger: Any, request_id: str, **tail: Any) -> Any:
        if tuple(tail) == self.tail:
            return self.emit(logger, request_id, *tail.values())
        # Other names than the declared tail: the template does not fit them.
        return self._general(logger, request_id, tail)

    def emit(self, logger: Any, request_id: str, *values: Any) -> Any:
        """``info()`` with the values of the ``tail`` names given at construction, in
        order: the same line from the template, without a keyword dict."""
        if logger is not self.ready:
            if len(values) != len(self.tail):
                raise TypeError(f"emit() takes one value for each of {self.tail}")
            if not self._fast(logger) or not isinstance(logger._logger, LineWriter):
                return self._general(logger, request_id, dict(zip(self.tail, values, strict=True)))
            if logger.min_level > 20:
                return None
            self.ready = logger
        try:
            extra = self._bound(self.tail) if _BOUND else b""
            if extra is None:
                return self._general(logger, request_id, dict(zip(self.tail, values, strict=True)))
            line = self.template % (
                _dump(request_id),
                *map(_dump, values),
                extra,
                _CLOCK.stamp_bytes(),
            )
        except (TypeError, orjson.JSONEncodeError):
            if len(values) != len(self.tail):  # the template found too few or too many
                raise TypeError(f"emit() takes one value for each of {self.tail}") from None
            return self._general(logger, request_id, dict(zip(self.tail, values, strict=True)))
        return logger._logger.line(line)

    def _fast(self, logger: Any) -> bool:
        """Whether this line may be rendered here rather than by the logger."""
        return (
            self.middle is not None
            and isinstance(logger, JsonBoundLogger)
            and logger._processors is _JSON_CHAIN
            and not logger._context
        )

    def _bound(self, names: tuple[str, ...]) -> bytes | None:
        """The bound context's keys not in the line, rendered as the logger adds them;
        None when one would clash with the level or the timestamp."""
        if not _BOUND:
            return b""
        parts: list[bytes] = []
        known = self.known
        for name, var in _BOUND_VARS.current(_BOUND):
            value = var.get(Ellipsis)
            if value is Ellipsis or name in known or name in names:
                continue
            if name in _RESERVED:
                return None
            parts.append(_json_key(name))
            parts.append(_dump(value))
        return b"".join(parts)

    def _general(self, logger: Any, request_id: str, tail: dict[str, Any]) -> Any:
        return logger.info(self.event, request_id=request_id, **self.fields, **tail)


_RESERVED = frozenset({"level", "timestamp"})
_KEYS: dict[str, bytes] = {}
_dump: Callable[[Any], bytes] = (
    functools.partial(orjson.dumps, default=_fallback, option=_OPTIONS)
    if orjson is not None
    else json.dumps  # never called without orjson
)


def _escaped(literal: bytes) -> bytes:
    """``literal`` for a %-format template: its own % signs doubled."""
    return literal.replace(b"%", b"%%")


def _json_key(name: str) -> bytes:
    key = _KEYS.get(name)
    if key is None:
        if len(_KEYS) > 1024:
            _KEYS.clear()
        key = _KEYS[name] = b"," + orjson.dumps(name) + b":"
    return key


def _fast_logger_class(level: int, json_lines: bool) -> type[FastBoundLogger]:
    base = JsonBoundLogger if json_lines else FastBoundLogger
    return type(base.__name__, (base,), {"min_level": level})


def _writer_factory(stream: IO[str]) -> Callable[..., LineWriter]:
    buffer = getattr(stream, "buffer", None)
    writer: LineWriter = (
        LineWriter(buffer, stream) if buffer is not None else _TextWriter(stream, stream)  # type: ignore[arg-type]
    )

    def factory(*args: Any) -> LineWriter:
        return writer

    return factory


def configure(level: str = "info", fmt: str = "json") -> None:
    if fmt == "console":
        structlog.configure(
            processors=[
                structlog.contextvars.merge_contextvars,
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.processors.format_exc_info,
                structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()),
            ],
            wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, 20)),
            # Whole lines in one write: print() writes the line and its newline apart,
            # and workers sharing a terminal or pipe then interleave mid-line.
            logger_factory=_writer_factory(sys.stderr),
            cache_logger_on_first_use=True,
        )
    else:
        structlog.configure(
            processors=_JSON_CHAIN,
            wrapper_class=_fast_logger_class(_LEVELS.get(level, 20), json_lines=True),
            logger_factory=_writer_factory(sys.stderr),
            cache_logger_on_first_use=True,
        )
    # aiohttp's own loggers: keep warnings (bad requests, protocol errors), drop access logs.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.ERROR)
