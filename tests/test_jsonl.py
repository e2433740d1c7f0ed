"""``layerskip.files.jsonl``: the one reader of JSON Lines files and of the cut last line a crash leaves."""

from __future__ import annotations

import pytest

from layerskip.errors import LayerskipError
from layerskip.files.jsonl import keep_records, parse_lines, read_records


@pytest.mark.parametrize("tail", ['{"a": 3', '{"a": 3}'])  # cut mid-record, or cut before its newline
def test_a_cut_last_line_is_cut_off_the_file(tmp_path, tail):
    path = tmp_path / "log.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n' + tail)
    assert read_records(path) == [{"a": 1}, {"a": 2}]
    assert path.read_text() == '{"a": 1}\n\n{"a": 2}\n'
    assert read_records(tmp_path / "missing.jsonl") == []


def test_a_bad_line_before_the_last_is_an_error_naming_it(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"a": 1}\nnot json\n{"a": 2}\n')
    with pytest.raises(LayerskipError, match=r"log.jsonl:2: corrupt log record"):
        read_records(path, "log record")


def test_keep_records_drops_what_a_resumed_run_repeats(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text("".join(f'{{"step": {s}}}\n' for s in range(1, 5)) + '{"step": 5')
    keep_records(path, lambda r: r["step"] <= 2)
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'


def test_parse_lines_names_the_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(b'{"x": 1}\n\n[2]\n')
    assert list(parse_lines(path)) == [(1, {"x": 1}), (3, [2])]
    path.write_bytes(b'{"x": 1}\n{"x": \n')
    with pytest.raises(LayerskipError, match=r"data.jsonl:2: invalid JSON"):
        list(parse_lines(path))
    path.write_bytes(b'\xff\n')
    with pytest.raises(LayerskipError, match=r"data.jsonl:1: not valid UTF-8"):
        list(parse_lines(path))
