"""Reading a download manifest: the (work_id, artifact_id, url) rows a run plans.

A manifest is JSON Lines (one object per line) or CSV (a header row naming the
columns).  Manifests can hold millions of rows, so the file is read one physical
line at a time and never parsed whole; only the valid rows are kept, as small
slotted records.

One bad row must not sink a run of millions: a row with a missing field, a URL
that does not parse, or a scheme other than http/https becomes a
:class:`ManifestProblem` carrying its line number, and every other row still
runs.  Only faults of the file as a whole (missing, unreadable, not UTF-8, a CSV
header without the required columns, nothing in it at all) raise
:class:`~docstokg.errors.ConfigurationError`, because no row can be trusted then.

URLs are canonicalised here, before anything is planned: the ledger's idempotency
key is (work_id, artifact_id, canonical_url), so the same artifact written two
ways (``HTTP://Example.org:80/a#top`` and ``http://example.org/a``) must reach it
as one string, or it would become two jobs and be downloaded twice.
"""

from __future__ import annotations

import csv
import itertools
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import SplitResult, urlsplit

from docstokg.errors import ConfigurationError

__all__ = ["Manifest", "ManifestProblem", "ManifestRow", "canonical_url", "read_manifest"]

FIELDS = ("work_id", "artifact_id", "url")
"""The fields every row must carry, in the order messages name them."""

_JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson", ".json"})
_CSV_SUFFIXES = frozenset({".csv"})
_DEFAULT_PORTS = {"http": 80, "https": 443}

# Whitespace (Unicode-wide, as ``\s`` is for str patterns) and C0/DEL/C1 controls.
# urllib silently deletes tabs and newlines inside a URL; refusing them instead
# keeps a mangled cell (two URLs glued by a newline, say) from turning into a
# third URL that nobody wrote.
_SPACE_OR_CONTROL = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")
# A registered host name: letters and digits of any script, '-', '.', '_'.
# Bracketed IPv6 literals are checked by urlsplit itself.
_HOST_NAME = re.compile(r"[\w.-]+")
_SHOWN_CHARS = 200


@dataclass(frozen=True, slots=True)
class ManifestRow:
    """One valid row: fetch ``url`` as artifact ``artifact_id`` of work ``work_id``.

    ``line`` is the 1-based physical line the row starts on, so an operator can
    find it in the file; ``url`` is already canonical (see :func:`canonical_url`)
    and is what the ledger stores as ``canonical_url``.
    """

    line: int
    work_id: str
    artifact_id: str
    url: str


@dataclass(frozen=True, slots=True)
class ManifestProblem:
    """A row that was skipped, and why, in words a user can act on."""

    line: int
    reason: str


@dataclass(frozen=True)
class Manifest:
    """Everything read from one manifest file.

    ``rows`` holds each (work_id, artifact_id, url) once, in file order; a later
    repeat is only counted in ``duplicates``, because planning it again would be
    a no-op anyway and keeping it would cost memory for nothing.
    """

    path: Path
    format: str
    rows: list[ManifestRow]
    problems: list[ManifestProblem]
    duplicates: int


def canonical_url(raw: str) -> str:
    """The one spelling of ``raw`` that the ledger keys jobs by.

    Two spellings of one address must give one job (see the module docstring),
    so this lowercases the scheme and host, drops a default port (:80 for http,
    :443 for https) and the fragment (never sent to a server), and turns an
    empty path into ``/``.  Everything a server may tell apart is kept as
    written: user info, path (no percent-decoding) and query string.

    Raises :class:`ValueError` whose message says what is wrong with ``raw``: no
    scheme, a scheme other than http/https, no host, a bad port, or whitespace or
    control characters inside.
    """
    text = raw.strip()
    if not text:
        raise ValueError("invalid URL '': it is empty")
    try:
        parts = urlsplit(text)
    except ValueError as exc:
        raise ValueError(f"invalid URL {_shown(text)}: {exc}") from None
    scheme = parts.scheme.lower()
    # "localhost:8080/x" splits as scheme "localhost", a port after its colon:
    # what is missing there is a scheme.  "mailto:x" has one, just not ours.
    after_colon = text[len(parts.scheme) + 1 :]
    host_and_port = "://" not in text and after_colon[:1].isdigit()
    if not scheme or (scheme not in _DEFAULT_PORTS and host_and_port):
        raise ValueError(
            f"invalid URL {_shown(text)}: no scheme; it should start with http:// or https://"
        )
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"scheme {_shown(scheme)} is not http or https in URL {_shown(text)}")
    bad = _SPACE_OR_CONTROL.search(text)
    if bad is not None:
        raise ValueError(
            f"invalid URL {_shown(text)}: it contains {_shown(bad.group())} at character "
            f"{bad.start() + 1}; percent-encode it (a space is %20)"
        )
    host = _host(parts, text)
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"invalid URL {_shown(text)}: bad port ({exc})") from None
    userinfo, at, _ = parts.netloc.rpartition("@")
    netloc = f"{userinfo}{at}{host}"
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        netloc = f"{netloc}:{port}"
    query = f"?{parts.query}" if parts.query else ""
    return f"{scheme}://{netloc}{parts.path or '/'}{query}"


def _host(parts: SplitResult, text: str) -> str:
    """The lowercased host of ``parts`` as it goes back into a URL (IPv6 in brackets)."""
    hostname = parts.hostname  # already lowercased, brackets removed
    if not hostname:
        raise ValueError(f"invalid URL {_shown(text)}: no host; write it as scheme://host/path")
    if ":" in hostname:  # only an IPv6 literal can hold ':' here; urlsplit validated it
        return f"[{hostname}]"
    if not _HOST_NAME.fullmatch(hostname):
        raise ValueError(
            f"invalid URL {_shown(text)}: host {_shown(hostname)} has characters a host "
            "name cannot have (letters, digits, '-', '.' and '_' only)"
        )
    return hostname


def read_manifest(path: Path) -> Manifest:
    """Read every row of the manifest at ``path``: valid rows, problems, duplicates.

    The format comes from the suffix (``.csv``; ``.jsonl``, ``.ndjson``,
    ``.json``); for any other suffix the first non-blank character decides:
    ``{`` means JSON Lines, anything else CSV.  Raises
    :class:`~docstokg.errors.ConfigurationError` when the file as a whole cannot
    be used; a bad row only becomes a :class:`ManifestProblem`.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigurationError(
            f"manifest {path} is a directory, not a file; pass the path of a .jsonl or "
            ".csv manifest"
        )
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        raise ConfigurationError(
            f"manifest {path} does not exist; check the path (relative paths start at "
            "the current directory)"
        ) from None
    except PermissionError:
        raise ConfigurationError(
            f"manifest {path} is not readable: permission denied; grant read permission "
            "to this user, or copy the file somewhere readable"
        ) from None
    except OSError as exc:
        raise ConfigurationError(
            f"manifest {path} cannot be opened: {exc.strerror or exc}; check the path"
        ) from None
    with handle:
        try:
            return _read(path, handle)
        except OSError as exc:
            raise ConfigurationError(
                f"manifest {path} could not be read to the end: {exc.strerror or exc}; "
                "check the disk or copy the file elsewhere and retry"
            ) from None


def _read(path: Path, handle: BinaryIO) -> Manifest:
    lines = _decoded_lines(path, handle)
    suffix = path.suffix.lower()
    if suffix in _CSV_SUFFIXES:
        fmt = "csv"
    elif suffix in _JSONL_SUFFIXES:
        fmt = "jsonl"
    else:
        # Peek at lines up to the first non-blank one, then put them back.
        peeked: list[tuple[int, str]] = []
        fmt = "csv"
        for numbered in lines:
            peeked.append(numbered)
            first = numbered[1].lstrip()
            if first:
                fmt = "jsonl" if first.startswith("{") else "csv"
                break
        lines = itertools.chain(peeked, lines)
    collector = _Collector()
    if fmt == "jsonl":
        _read_jsonl(lines, collector)
        what = "is empty: it holds no rows, valid or not"
    else:
        header_line = _read_csv(path, (text for _, text in lines), collector)
        what = (
            "is empty: it holds no rows, valid or not"
            if header_line is None
            else f"has a header row (line {header_line}) but no rows below it"
        )
    if collector.seen == 0:
        raise ConfigurationError(
            f"manifest {path} {what}. Write one row per artifact: a JSON object per line "
            "with work_id, artifact_id and url, or a CSV file whose header row names those "
            "columns"
        )
    return Manifest(
        path=path,
        format=fmt,
        rows=collector.rows,
        problems=collector.problems,
        duplicates=collector.duplicates,
    )


def _decoded_lines(path: Path, handle: BinaryIO) -> Iterator[tuple[int, str]]:
    """(line number, text) of each physical line, line ending kept.

    Lines are split on ``\\n`` only (so a U+2028 inside a JSON string or a
    ``\\r`` inside a quoted CSV cell stays within its line) and decoded one by
    one, which is what lets a decoding error name its line.
    """
    for number, raw in enumerate(handle, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigurationError(
                f"manifest {path} is not UTF-8 text: line {number} has the byte "
                f"0x{raw[exc.start]:02x} at byte {exc.start + 1} of the line, which UTF-8 "
                "does not allow; re-save the file as UTF-8"
            ) from None
        if number == 1 and text.startswith("\ufeff"):
            text = text[1:]
        yield number, text


class _Collector:
    """Sorts each data row into valid, duplicate or problem, remembering what was seen."""

    def __init__(self) -> None:
        self.rows: list[ManifestRow] = []
        self.problems: list[ManifestProblem] = []
        self.duplicates = 0
        self.seen = 0
        self._keys: set[tuple[str, str, str]] = set()

    def problem(self, line: int, reason: str) -> None:
        self.seen += 1
        self.problems.append(ManifestProblem(line, reason))

    def row(self, line: int, values: dict[str, str | None]) -> None:
        """Validate one row whose fields are stripped strings (``None``: missing)."""
        missing = [name for name in FIELDS if not values.get(name)]
        if missing:
            self.problem(line, "; ".join(f"missing field {name!r}" for name in missing))
            return
        work_id, artifact_id, raw_url = (values[name] or "" for name in FIELDS)
        try:
            url = canonical_url(raw_url)
        except ValueError as exc:
            self.problem(line, str(exc))
            return
        self.seen += 1
        key = (work_id, artifact_id, url)
        if key in self._keys:
            self.duplicates += 1
            return
        self._keys.add(key)
        self.rows.append(ManifestRow(line, work_id, artifact_id, url))


def _read_jsonl(lines: Iterable[tuple[int, str]], collector: _Collector) -> None:
    for number, text in lines:
        if not text.strip():
            continue
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            collector.problem(number, f"invalid JSON: {exc.msg} (column {exc.colno})")
            continue
        except RecursionError:
            collector.problem(number, "invalid JSON: nested too deeply")
            continue
        except ValueError as exc:  # e.g. an integer with more digits than Python converts
            collector.problem(number, f"invalid JSON: {exc}")
            continue
        if not isinstance(document, dict):
            collector.problem(
                number,
                f"not a JSON object (found {_json_kind(document)}); write one object per "
                'line, like {"work_id": ..., "artifact_id": ..., "url": ...}',
            )
            continue
        values: dict[str, str | None] = {}
        wrong: list[str] = []
        for name in FIELDS:
            value = document.get(name)
            if isinstance(value, str):
                values[name] = value.strip()
            elif isinstance(value, int) and not isinstance(value, bool):
                values[name] = str(value)
            elif value is None:
                values[name] = None
            else:
                wrong.append(
                    f"field {name!r} must be a string or an integer, not {_json_kind(value)}"
                )
        if wrong:
            collector.problem(number, "; ".join(wrong))
            continue
        collector.row(number, values)


def _read_csv(path: Path, texts: Iterator[str], collector: _Collector) -> int | None:
    """Collect the data rows of a CSV manifest; return the header's line, if there is one."""
    reader = csv.reader(texts)
    columns: dict[str, int] | None = None
    header_line: int | None = None
    width = 0
    while True:
        start = reader.line_num + 1  # a record starts on the line after the previous one
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            collector.problem(start, f"invalid CSV: {exc}")
            continue
        if not record or (len(record) == 1 and not record[0].strip()):
            continue  # a blank line
        if columns is None:
            columns = _csv_columns(path, record, start)
            header_line, width = start, len(record)
            continue
        if len(record) < width:
            collector.problem(
                start, f"row has {len(record)} cells but the header has {width} columns"
            )
            continue
        if any(cell.strip() for cell in record[width:]):
            collector.problem(
                start,
                f"row has {len(record)} cells but the header has {width} columns; "
                "quote values that contain commas",
            )
            continue
        collector.row(start, {name: record[index].strip() for name, index in columns.items()})
    return header_line


def _csv_columns(path: Path, header: list[str], line: int) -> dict[str, int]:
    """The index of each required column in ``header``, or a whole-file error."""
    names = [cell.strip() for cell in header]
    missing = [name for name in FIELDS if name not in names]
    if missing:
        raise ConfigurationError(
            f"CSV manifest {path} has no column {', '.join(map(repr, missing))} in its header "
            f"(line {line}); the columns found are {', '.join(map(repr, names))}. The first "
            "non-blank line must name the columns work_id, artifact_id and url, in any order"
        )
    repeated = [name for name in FIELDS if names.count(name) > 1]
    if repeated:
        raise ConfigurationError(
            f"CSV manifest {path} names the column {', '.join(map(repr, repeated))} more than "
            f"once in its header (line {line}); keep one column of each name"
        )
    return {name: names.index(name) for name in FIELDS}


def _json_kind(value: object) -> str:
    """How a JSON value's type reads in an error message."""
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, float):
        return "a fractional number"
    if isinstance(value, int):
        return "an integer"
    return "null"


def _shown(value: str) -> str:
    """``value`` quoted for a message, cut short so a huge cell cannot bloat a problem."""
    if len(value) > _SHOWN_CHARS:
        return repr(value[:_SHOWN_CHARS] + "…")
    return repr(value)
