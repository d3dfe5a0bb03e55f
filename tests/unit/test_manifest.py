"""Manifests: both formats, exact line numbers of bad rows, canonical URLs, file errors."""

from __future__ import annotations

import csv
import io
import json
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from docstokg.errors import ConfigurationError
from docstokg.manifest import (
    Manifest,
    ManifestProblem,
    ManifestRow,
    canonical_url,
    read_manifest,
)


def write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


def triples(manifest: Manifest) -> list[tuple[str, str, str]]:
    return [(row.work_id, row.artifact_id, row.url) for row in manifest.rows]


def problem_at(manifest: Manifest, line: int) -> str:
    found = [problem.reason for problem in manifest.problems if problem.line == line]
    assert len(found) == 1, manifest.problems
    return found[0]


# --- happy paths ---------------------------------------------------------------


def test_jsonl_rows_come_back_in_order_with_line_numbers(tmp_path: Path) -> None:
    path = write(
        tmp_path / "m.jsonl",
        '{"work_id": "W1", "artifact_id": "pdf", "url": "https://example.org/w1.pdf"}\n'
        '{"work_id": " W2 ", "artifact_id": "xml", "url": " HTTP://Example.org:80/w2#x ",'
        ' "extra": [1, 2]}\n',
    )
    manifest = read_manifest(path)
    assert manifest.format == "jsonl"
    assert manifest.path == path
    assert manifest.rows == [
        ManifestRow(1, "W1", "pdf", "https://example.org/w1.pdf"),
        ManifestRow(2, "W2", "xml", "http://example.org/w2"),
    ]
    assert manifest.problems == []
    assert manifest.duplicates == 0


def test_csv_with_extra_columns_in_another_order(tmp_path: Path) -> None:
    path = write(
        tmp_path / "m.csv",
        "note, url ,artifact_id,work_id\r\n"
        "first,https://Example.org/a,pdf,W1\r\n"
        '"two, with comma",http://example.org/b?x=1,xml, W2 \r\n',
    )
    manifest = read_manifest(path)
    assert manifest.format == "csv"
    assert manifest.rows == [
        ManifestRow(2, "W1", "pdf", "https://example.org/a"),
        ManifestRow(3, "W2", "xml", "http://example.org/b?x=1"),
    ]
    assert manifest.problems == []


def test_csv_a_quoted_cell_with_line_breaks_is_one_problem_over_its_lines(tmp_path: Path) -> None:
    """A cell spanning lines is refused whole (it is what a stray quote looks like), and
    the line numbers of the rows after it still count every physical line."""
    path = write(
        tmp_path / "m.csv",
        "work_id,artifact_id,url,note\n"
        'W1,a,http://x.org/1,"line one\nline two\nline three"\n'
        "W2,a,http://x.org/2,\n"
        "\n"
        "W3,a,\n"
        "W4,a,ftp://x.org/4,n\n",
    )
    manifest = read_manifest(path)
    assert [(row.line, row.work_id) for row in manifest.rows] == [(5, "W2")]
    assert problem_at(manifest, 2).startswith("lines 2-4: a quoted field holds line breaks")
    assert manifest.problems[0].last_line == 4
    assert manifest.problems[0].lines == 3
    assert "3 cells" in problem_at(manifest, 7)
    assert "scheme 'ftp'" in problem_at(manifest, 8)
    assert len(manifest.problems) == 3
    assert manifest.skipped_lines == 5


def test_a_utf8_bom_is_accepted_in_both_formats(tmp_path: Path) -> None:
    jsonl = write(
        tmp_path / "m.jsonl", '\ufeff{"work_id": "W", "artifact_id": "a", "url": "http://x.org/"}\n'
    )
    csv_file = write(tmp_path / "m.csv", "\ufeffwork_id,artifact_id,url\nW,a,http://x.org/\n")
    assert triples(read_manifest(jsonl)) == [("W", "a", "http://x.org/")]
    assert triples(read_manifest(csv_file)) == [("W", "a", "http://x.org/")]


def test_blank_lines_are_skipped_but_still_counted(tmp_path: Path) -> None:
    path = write(
        tmp_path / "m.jsonl",
        '\n   \n{"work_id": "W", "artifact_id": "a", "url": "http://x.org/"}\r\n\t\n'
        '{"work_id": "W", "artifact_id": "b", "url": "http://x.org/"}',
    )
    manifest = read_manifest(path)
    assert [row.line for row in manifest.rows] == [3, 5]
    assert manifest.problems == []


def test_integer_ids_become_strings(tmp_path: Path) -> None:
    path = write(
        tmp_path / "m.jsonl", '{"work_id": 42, "artifact_id": 0, "url": "http://x.org/"}\n'
    )
    assert triples(read_manifest(path)) == [("42", "0", "http://x.org/")]


def test_repeated_rows_are_counted_once_kept_once(tmp_path: Path) -> None:
    row = {"work_id": "W", "artifact_id": "a", "url": "http://x.org/p"}
    same_url_spelled_otherwise = {**row, "url": "HTTP://X.ORG:80/p#frag"}
    other = {**row, "artifact_id": "b"}
    path = write(
        tmp_path / "m.jsonl",
        "".join(json.dumps(r) + "\n" for r in (row, other, row, same_url_spelled_otherwise)),
    )
    manifest = read_manifest(path)
    assert [row.line for row in manifest.rows] == [1, 2]
    assert manifest.duplicates == 2


# --- malformed rows --------------------------------------------------------------


def test_each_malformed_jsonl_row_is_reported_on_its_line(tmp_path: Path) -> None:
    good = '{"work_id": "W", "artifact_id": "a", "url": "http://x.org/"}'
    path = write(
        tmp_path / "m.jsonl",
        "\n".join(
            [
                good,  # 1
                '{"work_id": "W", "artifact_id": "a"}',  # 2
                '{"work_id": "  ", "artifact_id": "a", "url": ""}',  # 3
                '{"work_id": "W", "artifact_id": "a", "url": "htp//x"}',  # 4
                '{"work_id": "W", "artifact_id": "a", "url": "ftp://x.org/f"}',  # 5
                "[1, 2]",  # 6
                '{"work_id": "W" "artifact_id": "a"}',  # 7
                '{"work_id": true, "artifact_id": 1.5, "url": "http://x.org/"}',  # 8
                '{"work_id": null, "artifact_id": "b", "url": "http://x.org/"}',  # 9
                '{"work_id": "W", "artifact_id": "c", "url": "http://x.org/"}',  # 10
            ]
        )
        + "\n",
    )
    manifest = read_manifest(path)
    assert [row.line for row in manifest.rows] == [1, 10]
    assert [problem.line for problem in manifest.problems] == [2, 3, 4, 5, 6, 7, 8, 9]
    assert problem_at(manifest, 2) == "missing field 'url'"
    assert problem_at(manifest, 3) == "missing field 'work_id'; missing field 'url'"
    assert "invalid URL 'htp//x'" in problem_at(manifest, 4)
    assert "no scheme" in problem_at(manifest, 4)
    assert "scheme 'ftp' is not http or https" in problem_at(manifest, 5)
    assert "not a JSON object" in problem_at(manifest, 6)
    assert "array" in problem_at(manifest, 6)
    assert problem_at(manifest, 7) == "invalid JSON: Expecting ',' delimiter (column 17)"
    assert "'work_id' must be a string or an integer" in problem_at(manifest, 8)
    assert "'artifact_id' must be a string or an integer" in problem_at(manifest, 8)
    assert problem_at(manifest, 9) == "missing field 'work_id'"


def test_each_malformed_csv_row_is_reported_on_its_line(tmp_path: Path) -> None:
    path = write(
        tmp_path / "m.csv",
        "work_id,artifact_id,url\n"  # 1
        "W,a,http://x.org/\n"  # 2
        "W,b\n"  # 3
        ",c,http://x.org/\n"  # 4
        "W,d,not a url\n"  # 5
        "W,e,http://x.org/?a=1,b=2\n"  # 6: unquoted comma
        "W,f,http://x.org/,,\n"  # 7: trailing empty cells are harmless
        "W,g,http:///nohost\n",  # 8
    )
    manifest = read_manifest(path)
    assert [row.line for row in manifest.rows] == [2, 7]
    assert [problem.line for problem in manifest.problems] == [3, 4, 5, 6, 8]
    assert problem_at(manifest, 3) == "row has 2 cells but the header has 3 columns"
    assert problem_at(manifest, 4) == "missing field 'work_id'"
    assert "invalid URL 'not a url'" in problem_at(manifest, 5)
    assert "4 cells" in problem_at(manifest, 6)
    assert "no host" in problem_at(manifest, 8)


def test_a_huge_bad_url_is_cut_short_in_its_reason(tmp_path: Path) -> None:
    url = "ftp://x.org/" + "a" * 100_000
    path = write(tmp_path / "m.jsonl", json.dumps({"work_id": "W", "artifact_id": "a", "url": url}))
    assert len(problem_at(read_manifest(path), 1)) < 600


# --- canonical URLs --------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("http://Example.ORG/Path", "http://example.org/Path"),
        ("HTTPS://example.org/a", "https://example.org/a"),
        ("http://example.org:80/a", "http://example.org/a"),
        ("https://example.org:443/a", "https://example.org/a"),
        ("http://example.org:443/a", "http://example.org:443/a"),
        ("https://example.org:8443/a", "https://example.org:8443/a"),
        ("http://example.org/a#section-2", "http://example.org/a"),
        ("http://example.org", "http://example.org/"),
        ("http://example.org?q=1", "http://example.org/?q=1"),
        ("http://example.org/s?B=2&a=%20x", "http://example.org/s?B=2&a=%20x"),
        ("  http://example.org/a  ", "http://example.org/a"),
        ("http://User:Pw@Example.org:80/a", "http://User:Pw@example.org/a"),
        ("http://[2001:DB8::1]:80/a", "http://[2001:db8::1]/a"),
        ("http://bücher.de/ü", "http://bücher.de/ü"),
    ],
)
def test_canonical_url(raw: str, canonical: str) -> None:
    assert canonical_url(raw) == canonical
    assert canonical_url(canonical) == canonical  # canonical forms are fixed points


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("ftp://example.org/f", "scheme 'ftp' is not http or https"),
        ("FTP://example.org/f", "scheme 'ftp' is not http or https"),
        ("mailto:someone@example.org", "scheme 'mailto' is not http or https"),
        ("javascript:alert(1)", "scheme 'javascript' is not http or https"),
        ("localhost:8080/x", "invalid URL 'localhost:8080/x': no scheme"),
        ("example.org:8080/a", "no scheme"),
        ("http:///path", "no host"),
        ("https://", "no host"),
        ("http://exa mple.org/", "contains ' '"),
        ("http://example.org/a b", "contains ' '"),
        ("http://example.org/a\tb", "contains '\\t'"),
        ("http://example.org/\x00", "contains '\\x00'"),
        ("not a url", "no scheme"),
        ("htp//x", "invalid URL 'htp//x': no scheme"),
        ("example.org/a", "no scheme"),
        ("", "empty"),
        ("http://example.org:99999/", "bad port"),
        ("http://example.org:http/", "bad port"),
        ("http://exa<mple.org/", "host 'exa<mple.org'"),
        ("http://[not-ipv6]/", "invalid URL"),
    ],
)
def test_canonical_url_refuses_with_a_reason(raw: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=re.escape(fragment)):
        canonical_url(raw)


# --- format ----------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".txt", ".manifest", ""])
def test_an_unknown_suffix_is_sniffed_from_the_first_non_blank_character(
    tmp_path: Path, suffix: str
) -> None:
    jsonl = write(
        tmp_path / f"a{suffix}",
        '\n  \n  {"work_id": "W", "artifact_id": "a", "url": "http://x.org/"}\n',
    )
    csv_file = write(tmp_path / f"b{suffix}", "\n\nwork_id,artifact_id,url\nW,a,http://x.org/\n")
    read_jsonl = read_manifest(jsonl)
    read_csv = read_manifest(csv_file)
    assert (read_jsonl.format, read_csv.format) == ("jsonl", "csv")
    assert read_jsonl.rows == [ManifestRow(3, "W", "a", "http://x.org/")]
    assert read_csv.rows == [ManifestRow(4, "W", "a", "http://x.org/")]


@pytest.mark.parametrize(
    ("name", "fmt"),
    [("m.ndjson", "jsonl"), ("m.json", "jsonl"), ("m.JSONL", "jsonl"), ("m.CSV", "csv")],
)
def test_suffix_decides_the_format(tmp_path: Path, name: str, fmt: str) -> None:
    text = (
        "work_id,artifact_id,url\nW,a,http://x.org/\n"
        if fmt == "csv"
        else '{"work_id": "W", "artifact_id": "a", "url": "http://x.org/"}\n'
    )
    assert read_manifest(write(tmp_path / name, text)).format == fmt


def test_the_suffix_wins_over_the_content(tmp_path: Path) -> None:
    path = write(tmp_path / "m.jsonl", "work_id,artifact_id,url\nW,a,http://x.org/\n")
    manifest = read_manifest(path)
    assert manifest.rows == []
    assert [problem.line for problem in manifest.problems] == [1, 2]


# --- whole-file errors ---------------------------------------------------------------


def test_a_missing_file_names_its_path(tmp_path: Path) -> None:
    path = tmp_path / "absent.jsonl"
    with pytest.raises(ConfigurationError, match="does not exist") as info:
        read_manifest(path)
    assert str(path) in str(info.value)


def test_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="is a directory") as info:
        read_manifest(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_a_permission_error_is_reported_as_not_readable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file this user may not read (faked: CI runs as root, which reads any file)."""
    path = write(tmp_path / "m.csv", "work_id,artifact_id,url\nW,a,http://x.org/\n")

    def refuse(self: Path, *args: object, **kwargs: object) -> object:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "open", refuse)
    with pytest.raises(ConfigurationError, match="not readable") as info:
        read_manifest(path)
    assert str(path) in str(info.value)


def test_csv_without_the_required_columns_names_missing_and_found(tmp_path: Path) -> None:
    path = write(tmp_path / "m.csv", "work,artifact_id,link\nW,a,http://x.org/\n")
    with pytest.raises(ConfigurationError) as info:
        read_manifest(path)
    message = str(info.value)
    assert str(path) in message
    assert "'work_id', 'url'" in message
    assert "'work', 'artifact_id', 'link'" in message


def test_csv_naming_a_required_column_twice_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "m.csv", "work_id,url,artifact_id,url\nW,http://a/,a,http://b/\n")
    with pytest.raises(ConfigurationError, match="'url' more than once") as info:
        read_manifest(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("name", "text", "fragment"),
    [
        ("m.jsonl", "", "is empty"),
        ("m.jsonl", "\n  \n\n", "is empty"),
        ("m.csv", "", "is empty"),
        ("m.csv", "\ufeff", "is empty"),
        ("m.csv", "work_id,artifact_id,url\n\n", "header row (line 1) but no rows"),
        ("m.txt", "", "is empty"),
    ],
)
def test_a_manifest_without_rows_is_refused(
    tmp_path: Path, name: str, text: str, fragment: str
) -> None:
    path = write(tmp_path / name, text)
    with pytest.raises(ConfigurationError, match=re.escape(fragment)) as info:
        read_manifest(path)
    assert str(path) in str(info.value)


def test_only_malformed_rows_is_not_empty(tmp_path: Path) -> None:
    manifest = read_manifest(write(tmp_path / "m.jsonl", "not json\n"))
    assert manifest.rows == []
    assert manifest.problems == [ManifestProblem(1, "invalid JSON: Expecting value (column 1)")]


@pytest.mark.parametrize("name", ["m.jsonl", "m.csv"])
def test_bytes_that_are_not_utf8_name_the_line(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(
        b"work_id,artifact_id,url\n"
        b'{"work_id": "W", "artifact_id": "a", "url": "http://x.org/"}\n'
        b"W,caf\xe9,http://x.org/\n"
    )
    with pytest.raises(
        ConfigurationError, match=r"not UTF-8 text: line 3 has the byte 0xe9"
    ) as info:
        read_manifest(path)
    assert str(path) in str(info.value)


# --- both formats agree ------------------------------------------------------------------

# Ids are any printable text: controls (Cc) and line/paragraph separators are refused.
_id_text = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cc", "Zl", "Zp")), min_size=1, max_size=12
).filter(lambda value: value == value.strip() and value != "")
_ids = st.one_of(_id_text, st.integers(min_value=0, max_value=10**12).map(str))
_label = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8)
_safe = st.text("abcXYZ019-._~%/:@!$&'()*+,;=", max_size=12)


@st.composite
def _urls(draw: st.DrawFn) -> tuple[str, str]:
    """A written URL and, built independently of canonical_url, its canonical form."""
    scheme = draw(st.sampled_from(["http", "https", "HTTP", "Https"]))
    host = ".".join(draw(st.lists(_label, min_size=1, max_size=3)))
    written_host = "".join(c.upper() if draw(st.booleans()) else c for c in host)
    port = draw(st.one_of(st.none(), st.sampled_from([80, 443, 8080]), st.integers(1, 65535)))
    path = draw(st.one_of(st.just(""), _safe.map(lambda p: "/" + p)))
    query = draw(st.one_of(st.just(""), _safe.filter(bool)))
    fragment = draw(st.one_of(st.just(""), _safe))
    written = f"{scheme}://{written_host}"
    written += "" if port is None else f":{port}"
    written += path + (f"?{query}" if query else "") + (f"#{fragment}" if fragment else "")
    default = 80 if scheme.lower() == "http" else 443
    canonical = f"{scheme.lower()}://{host}"
    canonical += "" if port in (None, default) else f":{port}"
    canonical += (path or "/") + (f"?{query}" if query else "")
    return written, canonical


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(_ids, _ids, _urls()), min_size=1, max_size=12))
def test_jsonl_and_csv_read_back_the_same_rows(
    rows: list[tuple[str, str, tuple[str, str]]],
) -> None:
    expected: list[tuple[str, str, str]] = []
    for work_id, artifact_id, (_, canonical) in rows:
        if (work_id, artifact_id, canonical) not in expected:
            expected.append((work_id, artifact_id, canonical))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(["url", "work_id", "artifact_id"])
    writer.writerows([written, work_id, artifact_id] for work_id, artifact_id, (written, _) in rows)
    jsonl = "".join(
        json.dumps({"work_id": w, "artifact_id": a, "url": u}, ensure_ascii=False) + "\n"
        for w, a, (u, _) in rows
    )
    with tempfile.TemporaryDirectory() as directory:
        from_jsonl = read_manifest(write(Path(directory) / "m.jsonl", jsonl))
        from_csv = read_manifest(write(Path(directory) / "m.csv", buffer.getvalue()))
    assert from_jsonl.problems == from_csv.problems == []
    assert triples(from_jsonl) == triples(from_csv) == expected
    assert from_jsonl.duplicates == from_csv.duplicates == len(rows) - len(expected)
    first_lines: dict[tuple[str, str, str], int] = {}
    for number, (work_id, artifact_id, (_, canonical)) in enumerate(rows, start=1):
        first_lines.setdefault((work_id, artifact_id, canonical), number)
    assert [row.line for row in from_jsonl.rows] == list(first_lines.values())


# --- CSV quotes: no row is lost without a problem saying so -----------------------------


def _numbered_csv(count: int) -> list[str]:
    """A header and rows W2..W<count> on lines 2..count, each line ending in a newline."""
    return ["work_id,artifact_id,url\n"] + [
        f"W{number},a,http://x.org/{number}\n" for number in range(2, count + 1)
    ]


def test_a_stray_quote_that_never_closes_is_one_problem_over_every_line_it_swallowed(
    tmp_path: Path,
) -> None:
    lines = _numbered_csv(499)
    lines[11] = 'W12,"a,http://x.org/12\n'  # line 12: the quote opens and is never closed
    manifest = read_manifest(write(tmp_path / "m.csv", "".join(lines)))
    assert [row.line for row in manifest.rows] == list(range(2, 12))
    assert len(manifest.problems) == 1
    problem = manifest.problems[0]
    assert (problem.line, problem.last_line, problem.lines) == (12, 499, 488)
    assert problem.reason.startswith(
        "lines 12-499: a quoted field opened on line 12 is never closed"
    )
    assert "remove it" in problem.reason
    assert manifest.skipped_lines == 488


def test_a_stray_quote_closed_by_a_later_quote_costs_only_the_lines_between(
    tmp_path: Path,
) -> None:
    lines = _numbered_csv(30)
    lines[4] = 'W5,a,"http://x.org/5\n'  # line 5 opens a quote ...
    lines[8] = 'W9,a,http://x.org/9,"a note, with a comma"\n'  # ... line 9's first quote ends it
    manifest = read_manifest(write(tmp_path / "m.csv", "".join(lines)))
    assert [row.line for row in manifest.rows] == [2, 3, 4, *range(10, 31)]
    assert [(p.line, p.last_line) for p in manifest.problems] == [(5, 9)]
    assert problem_at(manifest, 5).startswith("lines 5-9: a quoted field holds line breaks")
    assert manifest.skipped_lines == 5


def test_a_quote_left_open_on_the_last_line_without_a_newline(tmp_path: Path) -> None:
    manifest = read_manifest(
        write(tmp_path / "m.csv", 'work_id,artifact_id,url\nW,a,http://x.org/\nW,"b')
    )
    assert [row.line for row in manifest.rows] == [2]
    assert [(p.line, p.last_line) for p in manifest.problems] == [(3, 3)]
    assert "lines 3-3: a quoted field opened on line 3 is never closed" in problem_at(manifest, 3)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('work_id,"artifact_id\nurl"\nW,a,http://x.org/\n', "runs on to line 2"),
        ('"work_id,artifact_id,url\nW,a,http://x.org/\n', "is never closed"),
    ],
)
def test_a_header_spanning_lines_is_a_whole_file_error(
    tmp_path: Path, text: str, fragment: str
) -> None:
    path = write(tmp_path / "m.csv", text)
    with pytest.raises(ConfigurationError, match=re.escape(fragment)) as info:
        read_manifest(path)
    assert str(path) in str(info.value)
    assert "header row (line 1)" in str(info.value)


_note_text = st.text('ab", \n\r', max_size=8)


@settings(max_examples=200, deadline=None)
@given(st.lists(_note_text, min_size=1, max_size=10))
def test_csv_written_rows_read_back_and_multi_line_cells_are_problems_over_their_lines(
    notes: list[str],
) -> None:
    """Whatever the quotes and commas in a cell, a row csv.writer wrote on one line is read
    back, and a row whose cell holds a line break is one problem over exactly its lines."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")  # so it quotes a lone "\r" too
    writer.writerow(["work_id", "artifact_id", "url", "note"])
    expected_rows: list[int] = []
    expected_spans: list[tuple[int, int]] = []
    line = 2
    for index, note in enumerate(notes):
        writer.writerow([f"W{index}", "a", f"http://x.org/{index}", note])
        breaks = note.count("\n")
        if breaks:
            expected_spans.append((line, line + breaks))
        else:
            expected_rows.append(line)
        line += breaks + 1
    with tempfile.TemporaryDirectory() as directory:
        manifest = read_manifest(write(Path(directory) / "m.csv", buffer.getvalue()))
    assert [row.line for row in manifest.rows] == expected_rows
    assert [(p.line, p.last_line) for p in manifest.problems] == expected_spans
    assert manifest.skipped_lines == sum(last - first + 1 for first, last in expected_spans)


# --- text in ids and URLs ---------------------------------------------------------------


def test_a_lone_surrogate_is_one_skipped_row_with_its_line(tmp_path: Path) -> None:
    path = write(
        tmp_path / "m.jsonl",
        '{"work_id": "W1", "artifact_id": "a", "url": "http://x.org/1"}\n'
        '{"work_id": "\\ud800", "artifact_id": "a", "url": "http://x.org/2"}\n'
        '{"work_id": "W3", "artifact_id": "a\\udfff", "url": "http://x.org/3"}\n'
        '{"work_id": "W4", "artifact_id": "a", "url": "http://x.org/\\ud83d"}\n'
        '{"work_id": "W5", "artifact_id": "\\ud83d\\ude00", "url": "http://x.org/5"}\n',
    )
    manifest = read_manifest(path)
    assert [(row.line, row.artifact_id) for row in manifest.rows] == [(1, "a"), (5, "\U0001f600")]
    assert [problem.line for problem in manifest.problems] == [2, 3, 4]
    assert "field 'work_id' holds a lone surrogate '\\ud800'" in problem_at(manifest, 2)
    assert "field 'artifact_id' holds a lone surrogate '\\udfff'" in problem_at(manifest, 3)
    assert "field 'url' holds a lone surrogate" in problem_at(manifest, 4)
    for problem in manifest.problems:
        problem.reason.encode("utf-8")  # the reason itself can be written anywhere


_CONTROLS = ["\x00", "\t", "\r", "\n", "\x1b", "\x7f", "\x85", "\x9b", "\u2028", "\u2029"]


@pytest.mark.parametrize("field", ["work_id", "artifact_id"])
@pytest.mark.parametrize("control", _CONTROLS)
def test_a_control_character_in_an_id_makes_the_row_malformed(
    tmp_path: Path, field: str, control: str
) -> None:
    row = {"work_id": "W", "artifact_id": "a", "url": "http://x.org/"}
    row[field] = f"id{control}[31mFORGED"
    path = write(tmp_path / "m.jsonl", json.dumps(row) + "\n")
    manifest = read_manifest(path)
    assert manifest.rows == []
    reason = problem_at(manifest, 1)
    assert f"field {field!r} holds the control character {control!r} at character 3" in reason
    assert repr(row[field]) in reason  # the value is shown, escaped
    assert reason.isprintable()


def test_an_escape_sequence_in_a_csv_id_is_refused_escaped(tmp_path: Path) -> None:
    path = write(
        tmp_path / "m.csv",
        'work_id,artifact_id,url\n"W\x1b[2J",a,http://x.org/\nW,a,http://x.org/\n',
    )
    manifest = read_manifest(path)
    assert [row.line for row in manifest.rows] == [3]
    assert "'W\\x1b[2J'" in problem_at(manifest, 2)
    assert "\x1b" not in problem_at(manifest, 2)


def test_a_url_over_8_kib_is_malformed_and_shown_by_a_short_escaped_prefix(
    tmp_path: Path,
) -> None:
    longest = "http://x.org/" + "a" * (8192 - len("http://x.org/"))
    too_long = "http://x.org/\x1b[31m" + "b" * 10_000
    path = write(
        tmp_path / "m.jsonl",
        json.dumps({"work_id": "W", "artifact_id": "a", "url": longest})
        + "\n"
        + json.dumps({"work_id": "W", "artifact_id": "b", "url": too_long})
        + "\n",
    )
    manifest = read_manifest(path)
    assert [row.url for row in manifest.rows] == [longest]
    reason = problem_at(manifest, 2)
    assert f"is {len(too_long):,} characters long, more than the 8,192 allowed" in reason
    assert reason.startswith("URL 'http://x.org/\\x1b[31mbbb")
    assert len(reason) < 300
    assert reason.isprintable()


def test_a_library_message_quoting_the_host_is_escaped() -> None:
    """urlsplit's NFKC error quotes the host as written; the reason must not carry its ESC."""
    with pytest.raises(ValueError, match="NFKC") as info:
        canonical_url("http://a\u2100b\x1b/")
    assert str(info.value).isprintable()
    assert "\\x1b" in str(info.value)


_any_text = st.text(st.characters(), max_size=40)


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({"work_id": _any_text, "artifact_id": _any_text, "url": _any_text}))
@example({"work_id": "W\ud800", "artifact_id": "a", "url": "http://x.org/"})
@example({"work_id": "W", "artifact_id": "a\x1b[2J", "url": "http://x.org/"})
@example({"work_id": "W", "artifact_id": "a", "url": "http://a\u2100b\x1b/"})
def test_every_reason_is_one_printable_line(row: dict[str, str]) -> None:
    """No manifest text reaches a reason unescaped: no line break, no terminal escape."""
    text = json.dumps(row) + "\n"  # ensure_ascii: surrogates travel as \\u escapes
    with tempfile.TemporaryDirectory() as directory:
        manifest = read_manifest(write(Path(directory) / "m.jsonl", text))
    for problem in manifest.problems:
        assert problem.reason.isprintable(), problem.reason
    line_breaking = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
    for kept in manifest.rows:
        assert line_breaking.search(kept.work_id + kept.artifact_id + kept.url) is None


# --- an optional expected checksum per row ---------------------------------------------------

DIGEST = "ab" * 32


def test_a_sha256_key_is_read_and_lowercased(tmp_path: Path) -> None:
    rows = [
        {"work_id": "W", "artifact_id": "a", "url": "http://x.org/a", "sha256": DIGEST.upper()},
        {"work_id": "W", "artifact_id": "b", "url": "http://x.org/b", "sha256": None},
        {"work_id": "W", "artifact_id": "c", "url": "http://x.org/c", "sha256": "  "},
        {"work_id": "W", "artifact_id": "d", "url": "http://x.org/d"},
    ]
    manifest = read_manifest(
        write(tmp_path / "m.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    )
    assert manifest.problems == []
    assert [row.sha256 for row in manifest.rows] == [DIGEST, None, None, None]


def test_a_sha256_column_is_optional_and_read(tmp_path: Path) -> None:
    path = write(
        tmp_path / "m.csv",
        f"sha256,work_id,artifact_id,url\n {DIGEST.upper()} ,W,a,http://x.org/a\n,W,b,http://x.org/b\n",
    )
    manifest = read_manifest(path)
    assert manifest.rows == [
        ManifestRow(2, "W", "a", "http://x.org/a", DIGEST),
        ManifestRow(3, "W", "b", "http://x.org/b", None),
    ]


@pytest.mark.parametrize(
    "bad",
    [
        "abc",
        DIGEST[:-1],
        DIGEST + "0",
        "g" * 64,
        f"sha256:{DIGEST}",
        DIGEST[:32] + " " + DIGEST[32:],
    ],
)
def test_a_malformed_sha256_makes_the_row_malformed(tmp_path: Path, bad: str) -> None:
    row = {"work_id": "W", "artifact_id": "a", "url": "http://x.org/a", "sha256": bad}
    manifest = read_manifest(write(tmp_path / "m.jsonl", json.dumps(row) + "\n"))
    assert manifest.rows == []
    assert problem_at(manifest, 1).startswith("sha256 must be 64 hex digits, not ")


@pytest.mark.parametrize("bad", ["12", "true", "[]", '{"hex": "ab"}'])
def test_a_sha256_of_another_json_type_is_refused(tmp_path: Path, bad: str) -> None:
    text = f'{{"work_id": "W", "artifact_id": "a", "url": "http://x.org/a", "sha256": {bad}}}\n'
    manifest = read_manifest(write(tmp_path / "m.jsonl", text))
    assert "field 'sha256' must be a string of 64 hex digits or null" in problem_at(manifest, 1)


def test_repeats_that_contradict_the_expected_checksum_are_problems(tmp_path: Path) -> None:
    other = "cd" * 32
    base = {"work_id": "W", "artifact_id": "a", "url": "http://x.org/a"}
    bare = {"work_id": "W", "artifact_id": "b", "url": "http://x.org/b"}
    rows = [
        {**base, "sha256": DIGEST},  # 1 kept
        {**base, "sha256": DIGEST.upper()},  # 2 the same checksum: a duplicate
        base,  # 3 names none: a duplicate, the kept row is the stricter one
        {**base, "sha256": other},  # 4 another checksum: a problem
        bare,  # 5 kept, without a checksum
        {**bare, "sha256": other},  # 6 a checksum the kept row would never check: a problem
    ]
    manifest = read_manifest(
        write(tmp_path / "m.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    )
    assert [row.line for row in manifest.rows] == [1, 5]
    assert manifest.duplicates == 2
    assert [problem.line for problem in manifest.problems] == [4, 6]
    assert f"already read on line 1, which names sha256 {DIGEST}" in problem_at(manifest, 4)
    assert f"this row names sha256 {other}" in problem_at(manifest, 4)
    assert "already read on line 5, which names no sha256" in problem_at(manifest, 6)


def test_a_repeated_sha256_column_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "m.csv", "work_id,artifact_id,url,sha256,sha256\nW,a,http://x.org/,,\n")
    with pytest.raises(ConfigurationError, match="'sha256' more than once"):
        read_manifest(path)
