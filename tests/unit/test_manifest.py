"""Manifests: both formats, exact line numbers of bad rows, canonical URLs, file errors."""

from __future__ import annotations

import csv
import io
import json
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
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


def test_csv_line_numbers_count_quoted_multi_line_cells(tmp_path: Path) -> None:
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
    assert [(row.line, row.work_id) for row in manifest.rows] == [(2, "W1"), (5, "W2")]
    assert "3 cells" in problem_at(manifest, 7)
    assert "scheme 'ftp'" in problem_at(manifest, 8)
    assert len(manifest.problems) == 2


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

_id_text = st.text(st.characters(codec="utf-8"), min_size=1, max_size=12).filter(
    lambda value: value == value.strip() and value != ""
)
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
