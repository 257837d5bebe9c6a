"""Transports: what a driver talks to, and wrappers that record or inject faults.

A *transport* is anything with the message-based part of a pyvisa resource::

    write(message: str) -> object       # send one command
    query(message: str) -> str          # send one command and read the answer
    close() -> None
    timeout                             # per-operation timeout in ms (attribute)

A ``pyvisa.resources.MessageBasedResource`` (real instruments, or pyvisa-sim from a YAML
file) is one; so is a digital-twin instrument (:mod:`stosim.hardware.twin`). A *resource
manager* is anything with ``open_resource(address, **kwargs) -> transport`` (a
``pyvisa.ResourceManager`` or :class:`stosim.hardware.twin.TwinResourceManager`).

For tests and for the diagnosis of a flaky lab:

- :class:`RecordingTransport` logs every message sent (and every answer),
- :class:`JournalTransport` appends them to a text file, flushed line by line, so that the record
  survives the process (what a driver sent at exit, or before a crash),
- :class:`FaultInjectingTransport` raises a timeout (``VisaIOError`` with the VISA timeout
  status) or a ``KeyboardInterrupt`` on chosen messages, the first k times,
- :class:`WrappingResourceManager` applies such wrappers to every resource it opens.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import re
from typing import Any, Callable, Protocol, runtime_checkable

from pyvisa import constants
from pyvisa.errors import VisaIOError

__all__ = [
    "Transport",
    "ResourceManagerLike",
    "is_timeout",
    "visa_timeout_error",
    "RecordingTransport",
    "JournalTransport",
    "read_journal",
    "FaultInjectingTransport",
    "Fault",
    "WrappingResourceManager",
]


@runtime_checkable
class Transport(Protocol):
    """The message-based interface a driver uses (a subset of pyvisa's MessageBasedResource)."""

    timeout: Any

    def write(self, message: str) -> Any: ...

    def query(self, message: str) -> str: ...

    def close(self) -> None: ...


@runtime_checkable
class ResourceManagerLike(Protocol):
    """Opens transports by VISA address (``pyvisa.ResourceManager`` or a twin's manager)."""

    def open_resource(self, resource_name: str, **kwargs: Any) -> Any: ...


def is_timeout(exc: BaseException) -> bool:
    """True for a transport timeout: pyvisa's ``VisaIOError`` with the timeout status, or a ``TimeoutError``."""
    if isinstance(exc, TimeoutError):
        return True
    return isinstance(exc, VisaIOError) and exc.error_code == constants.StatusCode.error_timeout


def visa_timeout_error() -> VisaIOError:
    """The exception pyvisa raises when an instrument does not answer in time (VI_ERROR_TMO)."""
    return VisaIOError(constants.StatusCode.error_timeout)


class _Delegating:
    """Forwards every attribute not defined here (``timeout``, ``read_termination``, ...) to the wrapped transport."""

    def __init__(self, inner: Any) -> None:
        object.__setattr__(self, "inner", inner)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in type(self).__dict__ or name in self.__dict__ or name == "inner":
            object.__setattr__(self, name, value)
        else:
            setattr(self.inner, name, value)


class RecordingTransport(_Delegating):
    """Records ``("write", message)``, ``("query", message)`` and ``("answer", text)`` in :attr:`log`.

    A shared ``log`` list can be given so that several instruments record into one timeline;
    entries are then ``(label, kind, message)``.
    """

    def __init__(self, inner: Any, log: list | None = None, label: str | None = None) -> None:
        super().__init__(inner)
        object.__setattr__(self, "log", [] if log is None else log)
        object.__setattr__(self, "label", label)

    def _record(self, kind: str, message: str) -> None:
        self.log.append((kind, message) if self.label is None else (self.label, kind, message))

    def write(self, message: str) -> Any:
        self._record("write", message)
        return self.inner.write(message)

    def query(self, message: str) -> str:
        self._record("query", message)
        answer = self.inner.query(message)
        self._record("answer", answer)
        return answer

    def close(self) -> None:
        self._record("close", "")
        self.inner.close()

    @property
    def sent(self) -> list[str]:
        """Every message sent (writes and queries), in order."""
        return [e[-1] for e in self.log if e[-2] in ("write", "query")]


class JournalTransport(_Delegating):
    """Appends one line per event to the text file ``path``: ``LABEL<TAB>KIND<TAB>MESSAGE``, KIND one of
    write, query, answer, close and error (the exception a write, query or close raised); tabs, newlines and
    backslashes in messages are escaped (\\t, \\n, \\\\). Each line is written and flushed at once (the
    file is opened for each line), so the journal is complete up to the last event even if the process
    ends right after it."""

    def __init__(self, inner: Any, path: str | os.PathLike, label: str = "") -> None:
        super().__init__(inner)
        object.__setattr__(self, "path", os.fspath(path))
        object.__setattr__(self, "label", label)

    def _record(self, kind: str, message: str) -> None:
        text = str(message).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(f"{self.label}\t{kind}\t{text}\n")

    def _call(self, kind: str, message: str, action: Callable[[], Any]) -> Any:
        self._record(kind, message)
        try:
            return action()
        except BaseException as exc:
            self._record("error", f"{type(exc).__name__}: {exc}")
            raise

    def write(self, message: str) -> Any:
        return self._call("write", message, lambda: self.inner.write(message))

    def query(self, message: str) -> str:
        answer = self._call("query", message, lambda: self.inner.query(message))
        self._record("answer", answer)
        return answer

    def close(self) -> None:
        self._call("close", "", self.inner.close)


_UNESCAPE = {"n": "\n", "t": "\t", "\\": "\\"}


def read_journal(path: str | os.PathLike) -> list[tuple[str, str, str]]:
    """The (label, kind, message) entries of a :class:`JournalTransport` file, in order."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            label, kind, text = line.rstrip("\n").split("\t", 2)
            out.append((label, kind, re.sub(r"\\(.)", lambda m: _UNESCAPE.get(m.group(1), m.group(1)), text)))
    return out


@dataclasses.dataclass
class Fault:
    """Raise ``error`` (a factory) on messages matching ``pattern`` (fnmatch, e.g. ``":FETC?"`` or
    ``":SOUR:CURR *"``) sent with ``kind`` ("write", "query" or "any"); the first ``times``
    matching messages fail, later ones go through (``times=None``: every one fails).

    ``before`` True: the message never reaches the instrument (a lost command); False: it is
    delivered and the answer is lost (a timeout while reading).
    """

    pattern: str
    error: Callable[[], BaseException] = visa_timeout_error
    times: int | None = 1
    kind: str = "any"
    before: bool = True
    raised: int = 0

    def matches(self, kind: str, message: str) -> bool:
        return (
            self.kind in ("any", kind)
            and fnmatch.fnmatchcase(message, self.pattern)
            and (self.times is None or self.raised < self.times)
        )


class FaultInjectingTransport(_Delegating):
    """Wraps a transport and raises the configured :class:`Fault` s (timeouts, interrupts)."""

    def __init__(self, inner: Any, faults: list[Fault]) -> None:
        super().__init__(inner)
        object.__setattr__(self, "faults", list(faults))

    def _maybe_fail(self, kind: str, message: str, before: bool) -> None:
        for fault in self.faults:
            if fault.before == before and fault.matches(kind, message):
                fault.raised += 1
                raise fault.error()

    def write(self, message: str) -> Any:
        self._maybe_fail("write", message, True)
        out = self.inner.write(message)
        self._maybe_fail("write", message, False)
        return out

    def query(self, message: str) -> str:
        self._maybe_fail("query", message, True)
        if any(f.before is False and f.matches("query", message) for f in self.faults):
            # the instrument gets the command, the answer is lost: consume it so nothing stale stays queued
            self.inner.query(message)
            self._maybe_fail("query", message, False)
        return self.inner.query(message)

    def close(self) -> None:
        self.inner.close()


class WrappingResourceManager:
    """A resource manager whose ``open_resource(address)`` returns ``wrap(address, resource)``."""

    def __init__(self, inner: Any, wrap: Callable[[str, Any], Any]) -> None:
        self.inner = inner
        self.wrap = wrap

    def open_resource(self, resource_name: str, **kwargs: Any) -> Any:
        return self.wrap(resource_name, self.inner.open_resource(resource_name, **kwargs))

    def close(self) -> None:
        """Close the wrapped manager (where it can be closed)."""
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()
