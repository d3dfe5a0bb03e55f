"""Reading a download manifest: the (work_id, artifact_id, url) rows a run plans.

A manifest is JSON Lines (one object per line) or CSV (a header row naming the
columns).  Manifests can hold millions of rows, so the file is read one physical
line at a time and never parsed whole; only the valid rows are kept, as small
slotted records.

One bad row must not sink a run of millions: a row with a missing field, a URL
that does not parse, or a scheme other than http/https becomes a
:class:`ManifestProblem` carrying its line number, and every other row still
runs.  No row is ever lost without a problem saying so: a CSV quote left open
would otherwise glue every later line into one cell, so a quoted cell may not
span lines, and a record that does is one problem naming every line it covers.
Text that would break a later layer (a lone surrogate, which cannot be encoded;
a control character in an id, which could forge a log line) is refused here,
and every reason that quotes manifest text escapes it.  Only faults of the file
as a whole (missing, unreadable, not UTF-8, a CSV header without the required
columns or spanning lines, nothing in it at all) raise
:class:`~docstokg.errors.ConfigurationError`, because no row can be trusted then.

URLs are canonicalised here, before anything is planned: the ledger's idempotency
key is (work_id, artifact_id, canonical_url), so the same artifact written two
ways (``HTTP://Example.org:80/a#top`` and ``http://example.org/a``) must reach it
as one string, or it would become two jobs and be downloaded twice.

A row may name the SHA-256 its artifact must have (an optional ``sha256``
column or key, as aria2c's ``checksum=``); it is normalised to lowercase here
and checked by the download layer.
"""

from __future__ import annotations

import csv
import itertools
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple
from urllib.parse import SplitResult, urlsplit

from docstokg.errors import ConfigurationError

__all__ = ["Manifest", "ManifestProblem", "ManifestRow", "canonical_url", "read_manifest"]

FIELDS = ("work_id", "artifact_id", "url")
"""The fields every row must carry, in the order messages name them."""

CHECKSUM_FIELD = "sha256"
"""The optional field naming the SHA-256 (64 hex digits) a row's artifact must have."""

MAX_URL_CHARS = 8192
"""The longest URL a row may hold (8 KiB, what common servers accept in a request line)."""

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
# What an id may not hold: C0 controls (NUL, TAB, CR, LF, ESC...), DEL, C1 controls,
# and the Unicode line and paragraph separators, so that an id printed in a log
# line can neither break that line nor drive the terminal.
_ID_FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# Half of a UTF-16 pair, which JSON's "\ud800" escape can produce: no encoder
# accepts it, so it would crash whatever layer first writes the id out.
_SURROGATE = re.compile("[\ud800-\udfff]")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_SHOWN_CHARS = 200
_SHOWN_PREFIX_CHARS = 60


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
    sha256: str | None = None
    """The SHA-256 the stored artifact must have (64 lowercase hex digits), if the row names one."""


@dataclass(frozen=True, slots=True)
class ManifestProblem:
    """A row that was skipped, and why, in words a user can act on.

    ``line`` is the first physical line of the skipped record; ``last_line`` is
    its last one when the record covers several (a CSV quote left open), so a
    reader knows how many lines, and so possibly rows, were lost with it.  The
    reason then starts with the span ("lines 12-499: ...").
    """

    line: int
    reason: str
    last_line: int | None = None

    @property
    def lines(self) -> int:
        """How many physical lines this problem covers (1 for an ordinary bad row)."""
        return 1 if self.last_line is None else self.last_line - self.line + 1


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

    @property
    def skipped_lines(self) -> int:
        """Physical lines whose rows were skipped (0 only when no row was lost).

        A run whose manifest lost rows must not report plain success, so this is
        what tells it so; it is at least ``len(problems)``, more when a problem
        spans several lines.
        """
        return sum(problem.lines for problem in self.problems)


def canonical_url(raw: str) -> str:
    """The one spelling of ``raw`` that the ledger keys jobs by.

    Two spellings of one address must give one job (see the module docstring),
    so this lowercases the scheme and host, drops a default port (:80 for http,
    :443 for https) and the fragment (never sent to a server), and turns an
    empty path into ``/``.  Everything a server may tell apart is kept as
    written: user info, path (no percent-decoding) and query string.

    Raises :class:`ValueError` whose message says what is wrong with ``raw``: no
    scheme, a scheme other than http/https, no host, a bad port, whitespace or
    control characters inside, or more than :data:`MAX_URL_CHARS` characters.
    The message quotes ``raw`` escaped and cut short, never whole.
    """
    text = raw.strip()
    if not text:
        raise ValueError("invalid URL '': it is empty")
    if len(text) > MAX_URL_CHARS:
        raise ValueError(
            f"URL {_shown(text, _SHOWN_PREFIX_CHARS)} is {len(text):,} characters long, more "
            f"than the {MAX_URL_CHARS:,} allowed; no server accepts a request line that long: "
            "check the cell (two columns run together?)"
        )
    try:
        parts = urlsplit(text)
    except ValueError as exc:  # its messages may quote the host as written: escape them
        raise ValueError(f"invalid URL {_shown(text)}: {_escaped(str(exc))}") from None
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
        raise ValueError(f"invalid URL {_shown(text)}: bad port ({_escaped(str(exc))})") from None
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
        header_line = _read_csv(path, lines, collector)
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
        # The row kept for each key, to tell a harmless repeat from a contradiction.
        self._kept: dict[tuple[str, str, str], ManifestRow] = {}

    def problem(self, line: int, reason: str, last_line: int | None = None) -> None:
        self.seen += 1
        self.problems.append(ManifestProblem(line, reason, last_line))

    def row(self, line: int, values: dict[str, str | None]) -> None:
        """Validate one row whose fields are stripped strings (``None``: missing)."""
        missing = [name for name in FIELDS if not values.get(name)]
        if missing:
            self.problem(line, "; ".join(f"missing field {name!r}" for name in missing))
            return
        reasons = [reason for reason in map(_text_problem, values.items()) if reason]
        if reasons:
            self.problem(line, "; ".join(reasons))
            return
        work_id, artifact_id, raw_url = (values[name] or "" for name in FIELDS)
        try:
            url = canonical_url(raw_url)
            sha256 = _checksum(values.get(CHECKSUM_FIELD))
        except ValueError as exc:
            self.problem(line, str(exc))
            return
        key = (work_id, artifact_id, url)
        kept = self._kept.get(key)
        if kept is None:
            self.seen += 1
            row = ManifestRow(line, work_id, artifact_id, url, sha256)
            self._kept[key] = row
            self.rows.append(row)
        elif sha256 is not None and sha256 != kept.sha256:
            self.problem(line, _conflict_reason(kept, sha256))
        else:
            self.seen += 1
            self.duplicates += 1


def _text_problem(item: tuple[str, str | None]) -> str | None:
    """Why a field's text cannot be used as it is, or None.

    A lone surrogate cannot be encoded by anything downstream (ledger, log,
    hash); a control character in an id could end or forge a log line, or
    drive the terminal that prints it.  URLs get their own, stricter check.
    """
    name, value = item
    if not value:
        return None
    surrogate = _SURROGATE.search(value)
    if surrogate is not None:
        return (
            f"field {name!r} holds a lone surrogate {_shown(surrogate.group())} at character "
            f"{surrogate.start() + 1} of {_shown(value)}: half of a UTF-16 pair, which is not "
            "text; write the character itself (or both halves of its \\u pair)"
        )
    if name in FIELDS[:2]:
        control = _ID_FORBIDDEN.search(value)
        if control is not None:
            return (
                f"field {name!r} holds the control character {_shown(control.group())} at "
                f"character {control.start() + 1} of {_shown(value)}; ids must be printable "
                "text on one line: remove it"
            )
    return None


def _checksum(value: str | None) -> str | None:
    """The expected SHA-256 as 64 lowercase hex digits; None when the row names none."""
    if not value:
        return None
    if _SHA256.fullmatch(value) is None:
        raise ValueError(
            f"sha256 must be 64 hex digits, not {_shown(value, _SHOWN_PREFIX_CHARS)} "
            f"({len(value):,} characters); write the artifact's SHA-256 in hex, or leave "
            "the sha256 empty for no check"
        )
    return value.lower()


def _conflict_reason(kept: ManifestRow, sha256: str) -> str:
    """Why a repeat of a kept row that names another expected checksum is refused."""
    named = f"names sha256 {kept.sha256}" if kept.sha256 else "names no sha256"
    return (
        f"work_id {_shown(kept.work_id)}, artifact_id {_shown(kept.artifact_id)}, url "
        f"{_shown(kept.url)} was already read on line {kept.line}, which {named}; this row "
        f"names sha256 {sha256}. One artifact has one content: keep the right checksum on "
        f"line {kept.line} and remove this row"
    )


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
            collector.problem(number, f"invalid JSON: {_escaped(str(exc))}")
            continue
        if not isinstance(document, dict):
            collector.problem(
                number,
                f"not a JSON object (found {_json_kind(document)}); write one object per "
                'line, like {"work_id": ..., "artifact_id": ..., "url": ...}',
            )
            continue
        values, wrong = _json_values(document)
        if wrong:
            collector.problem(number, "; ".join(wrong))
            continue
        collector.row(number, values)


def _json_values(document: dict[str, object]) -> tuple[dict[str, str | None], list[str]]:
    """The row's fields as stripped strings, and why any of them has the wrong type."""
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
            wrong.append(f"field {name!r} must be a string or an integer, not {_json_kind(value)}")
    checksum = document.get(CHECKSUM_FIELD)
    if isinstance(checksum, str):
        values[CHECKSUM_FIELD] = checksum.strip()
    elif checksum is not None:
        wrong.append(
            f"field {CHECKSUM_FIELD!r} must be a string of 64 hex digits or null, not "
            f"{_json_kind(checksum)}"
        )
    return values, wrong


class _CsvRecord(NamedTuple):
    """The physical lines one CSV record covers, and its text when it fits on one line."""

    first: int
    last: int
    text: str | None  # None: the record spans lines, so it is not parsed at all
    closed: bool  # False: a quote it opened is still open at the end of the file


def _read_csv(path: Path, lines: Iterable[tuple[int, str]], collector: _Collector) -> int | None:
    """Collect the data rows of a CSV manifest; return the header's line, if there is one."""
    columns: dict[str, int] | None = None
    header_line: int | None = None
    width = 0
    for record in _csv_records(lines):
        if record.text is None:
            if columns is None:
                raise ConfigurationError(_header_span_message(path, record))
            collector.problem(record.first, _span_reason(record), record.last)
            continue
        try:
            cells = next(csv.reader((record.text,)), [])
        except csv.Error as exc:
            collector.problem(record.first, _csv_error_reason(exc))
            continue
        if not cells or (len(cells) == 1 and not cells[0].strip()):
            continue  # a blank line
        if columns is None:
            columns = _csv_columns(path, cells, record.first)
            header_line, width = record.first, len(cells)
            continue
        if len(cells) < width:
            collector.problem(
                record.first, f"row has {len(cells)} cells but the header has {width} columns"
            )
            continue
        if any(cell.strip() for cell in cells[width:]):
            collector.problem(
                record.first,
                f"row has {len(cells)} cells but the header has {width} columns; "
                "quote values that contain commas",
            )
            continue
        collector.row(record.first, {name: cells[index].strip() for name, index in columns.items()})
    return header_line


def _csv_records(lines: Iterable[tuple[int, str]]) -> Iterator[_CsvRecord]:
    """Group physical lines into CSV records, holding no line in memory.

    A record that fits on its line carries its text.  One that does not (a
    quoted cell holding a line break, or a quote that is never closed) is only
    measured: its lines are skipped as one, because a stray quote would
    otherwise turn every later row into the text of one cell.
    """
    first = last = 0
    open_quote = False
    for number, text in lines:
        if open_quote:
            last = number
            open_quote = _ends_inside_quotes(text, quoted=True)
            if not open_quote:
                yield _CsvRecord(first, last, None, closed=True)
        elif _ends_inside_quotes(text, quoted=False):
            first = last = number
            open_quote = True
        else:
            yield _CsvRecord(number, number, text, closed=True)
    if open_quote:
        yield _CsvRecord(first, last, None, closed=False)


def _ends_inside_quotes(text: str, *, quoted: bool) -> bool:
    """Whether a CSV line, entered inside (``quoted``) or outside a quoted cell, ends inside one.

    The rules are those of the csv module's default dialect, which parses the
    lines that fit: a quote opens a cell only as its first character, ``""``
    inside quotes is one quote, and text after a closing quote runs on to the
    next comma as part of the cell.
    """
    if not quoted and '"' not in text:
        return False  # nearly every line: decided without a loop in Python
    position = 0
    while True:
        if quoted:
            closing = text.find('"', position)
            if closing < 0:
                return True
            if text.startswith('"', closing + 1):  # "" stands for one quote
                position = closing + 2
                continue
            quoted, position = False, closing + 1
        elif text.startswith('"', position):  # a quote as a cell's first character
            quoted, position = True, position + 1
            continue
        comma = text.find(",", position)
        if comma < 0:
            return False
        position = comma + 1


def _span_reason(record: _CsvRecord) -> str:
    """Why a record spanning lines was skipped, with the lines it covers and what to do."""
    span = f"lines {record.first}-{record.last}"
    if not record.closed:
        return (
            f"{span}: a quoted field opened on line {record.first} is never closed, so "
            f"every line after it ({record.last - record.first + 1:,} lines, to the end of the "
            "file) was read as its text and skipped; close the quote, or if it is a stray "
            'quote, remove it or quote the whole cell and double it ("a ""b"" c")'
        )
    return (
        f"{span}: a quoted field holds line breaks, so these {record.last - record.first + 1:,} "
        "lines were read as one row and skipped (a stray quote on the first line and "
        "another on the last one have the same effect); a row must fit on one line: remove "
        "the line breaks inside the quotes, or remove or double the stray quotes"
    )


def _header_span_message(path: Path, record: _CsvRecord) -> str:
    """The whole-file error of a header row whose quoted cell runs past its line."""
    end = f"runs on to line {record.last}" if record.closed else "is never closed"
    return (
        f"CSV manifest {path}: a quoted cell in the header row (line {record.first}) {end}; "
        "the header must name the columns on one line, like work_id,artifact_id,url"
    )


def _csv_error_reason(error: csv.Error) -> str:
    """A csv module error in the words of someone editing the manifest, not the code."""
    message = str(error)
    if message.startswith("new-line character seen in unquoted field"):
        return (
            "invalid CSV: a carriage return (\\r) stands inside the line outside quotes; "
            "remove it, or quote the cell that holds it"
        )
    return f"invalid CSV: {_escaped(message)}"


def _csv_columns(path: Path, header: list[str], line: int) -> dict[str, int]:
    """The index of each required column, and of ``sha256`` if present, or a whole-file error."""
    names = [cell.strip() for cell in header]
    missing = [name for name in FIELDS if name not in names]
    if missing:
        found = ", ".join(_shown(name, _SHOWN_PREFIX_CHARS) for name in names[:20])
        more = f" and {len(names) - 20:,} more" if len(names) > 20 else ""
        raise ConfigurationError(
            f"CSV manifest {path} has no column {', '.join(map(repr, missing))} in its header "
            f"(line {line}); the columns found are {found}{more}. The first non-blank line "
            "must name the columns work_id, artifact_id and url, in any order"
        )
    known = (*FIELDS, CHECKSUM_FIELD)
    repeated = [name for name in known if names.count(name) > 1]
    if repeated:
        raise ConfigurationError(
            f"CSV manifest {path} names the column {', '.join(map(repr, repeated))} more than "
            f"once in its header (line {line}); keep one column of each name"
        )
    return {name: names.index(name) for name in known if name in names}


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


def _shown(value: str, limit: int = _SHOWN_CHARS) -> str:
    """``value`` quoted for a message: escaped, and cut short so a huge cell cannot bloat it.

    ``repr`` escapes every character that is not printable (controls, ESC, line
    and paragraph separators, lone surrogates, format characters), so the
    result can neither break a log line nor reach a terminal as a command.
    """
    if len(value) > limit:
        return repr(value[:limit] + "…")
    return repr(value)


def _escaped(text: str) -> str:
    """Text that is not manifest-quoted (a library's message) with non-printables escaped."""
    if len(text) > _SHOWN_CHARS:
        text = text[:_SHOWN_CHARS] + "…"
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)
