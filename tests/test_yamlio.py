"""tngraph.yamlio: safe loading with positions, and YAML output."""

from __future__ import annotations

from pathlib import Path

import pytest

from tngraph import yamlio
from tngraph.errors import Location, SpecError
from tngraph.yamlio import dump_yaml, load_document, read_document


def only_problem(exc: pytest.ExceptionInfo[SpecError]) -> tuple[str, Location | None]:
    problems = exc.value.problems
    assert len(problems) == 1, exc.value.format()
    return problems[0].message, problems[0].location


def test_plain_data_and_positions() -> None:
    doc = load_document("a: 1\nb:\n  - x\n  - {c: 2.5, d: null, e: true}\n", "f.yaml")
    assert doc.data == {"a": 1, "b": ["x", {"c": 2.5, "d": None, "e": True}]}
    assert doc.locate(("a",)) == Location("f.yaml", 1, 4)
    assert doc.locate(("a",), key=True) == Location("f.yaml", 1, 1)
    assert doc.locate(("b", 0)) == Location("f.yaml", 3, 5)
    assert doc.locate(("b", 1, "d")) == Location("f.yaml", 4, 17)
    assert doc.locate(("b", 1, "d"), key=True) == Location("f.yaml", 4, 14)


def test_locate_falls_back_to_the_nearest_enclosing_value() -> None:
    doc = load_document("a:\n  b: {c: 1}\n")
    assert doc.locate(("a", "b", "missing", 3)) == doc.locate(("a", "b"))
    assert doc.locate(("nowhere",)) == Location("<string>", 1, 1)


def test_bytes_with_bom_are_decoded() -> None:
    assert load_document("\ufeffa: é\n".encode()).data == {"a": "é"}
    assert load_document("\ufeffa: 1\n").data == {"a": 1}


def test_bad_utf8_is_located() -> None:
    with pytest.raises(SpecError) as exc:
        load_document(b"a: 1\nbb: \xff\xfe\n", "x.yaml")
    message, loc = only_problem(exc)
    assert "not valid UTF-8" in message and "0xff" in message
    assert loc == Location("x.yaml", 2, 5)


def test_python_tags_are_never_constructed(tmp_path: Path) -> None:
    sentinel = tmp_path / "ran.txt"
    text = (f"a: !!python/object/apply:os.system ['touch {sentinel}']\n"
            f"b: !!python/object/apply:builtins.open ['{sentinel}', 'w']\n")
    with pytest.raises(SpecError) as exc:
        load_document(text)
    assert [p.location.line for p in exc.value.problems if p.location] == [1, 2]
    assert all("is not allowed" in p.message for p in exc.value.problems)
    assert not sentinel.exists()


@pytest.mark.parametrize("text", ["a: !custom 1\n", "a: !!set {x: null}\n", "a: !!binary aGk=\n",
                                  "? [x, y]\n: 1\n"],
                         ids=["local-tag", "set", "binary", "complex-key"])
def test_non_plain_values_are_rejected(text: str) -> None:
    with pytest.raises(SpecError):
        load_document(text)


def test_dates_are_read_as_text() -> None:
    assert load_document("name: 2020-01-01\n").data == {"name": "2020-01-01"}


def test_a_trailing_document_separator_is_not_a_second_document() -> None:
    assert load_document("a: 1\n---\n").data == {"a": 1}


def test_duplicate_keys_are_all_reported() -> None:
    with pytest.raises(SpecError) as exc:
        load_document("a: 1\nb: 2\na: 3\nm: {x: 1, x: 2}\n")
    assert [(p.location.line, p.location.column) for p in exc.value.problems] == [(3, 1), (4, 11)]
    assert "duplicate key 'a' (first defined at line 1)" in exc.value.problems[0].message


def test_alias_bomb_is_refused_before_expansion(monkeypatch: pytest.MonkeyPatch) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{k}: &a{k} [{', '.join([f'*a{k - 1}'] * 10)}]" for k in range(1, 30)]
    with pytest.raises(SpecError) as exc:
        load_document("\n".join(lines) + "\n")
    message, loc = only_problem(exc)
    assert f"more than {yamlio.MAX_VALUES} values" in message
    assert loc is not None and loc.line == 6   # a5 is the first value with > 200000 values


def test_aliases_within_the_limit_are_expanded() -> None:
    doc = load_document("a: &x {k: [1, 2]}\nb: *x\nc: [*x, *x]\n")
    assert doc.data["b"] == doc.data["c"][1] == {"k": [1, 2]}
    assert doc.data["b"] is not doc.data["a"]     # plain copies, not shared objects


@pytest.mark.parametrize("text", ["a: &x [1, *x]\n", "a: &x {b: {c: *x}}\n"])
def test_self_referencing_alias_is_an_error(text: str) -> None:
    with pytest.raises(SpecError) as exc:
        load_document(text)
    assert "alias refers to the value that contains it" in only_problem(exc)[0]


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    with pytest.raises(SpecError) as exc:
        load_document("a: " + "[" * 1000 + "]" * 1000 + "\n")
    assert "nested too deeply" in only_problem(exc)[0]


@pytest.mark.parametrize("text,expected", [
    ("", "spec file is empty"),
    ("# only a comment\n", "spec file is empty"),
    ("- 1\n- 2\n", "found a list"),
    ("hello\n", "found a single value"),
    ("a: 1\n---\nb: 2\n", "more than one YAML document"),
    ("a: [1, 2\n", "invalid YAML"),
    ("a:\n\tb: 1\n", "invalid YAML"),
])
def test_document_shape_errors(text: str, expected: str) -> None:
    with pytest.raises(SpecError) as exc:
        load_document(text, "s.yaml")
    message, loc = only_problem(exc)
    assert expected in message
    assert loc is not None and loc.filename == "s.yaml"


def test_tab_error_has_a_hint() -> None:
    with pytest.raises(SpecError) as exc:
        load_document("a:\n\tb: 1\n")
    assert "tabs" in (exc.value.problems[0].hint or "")
    assert exc.value.problems[0].location == Location("<string>", 2, 1)


def test_too_large_file_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(yamlio, "MAX_BYTES", 10)
    with pytest.raises(SpecError) as exc:
        load_document(b"a: 12345678901234\n")
    assert "larger than 10 bytes" in only_problem(exc)[0]


def test_read_document_errors(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no such file"):
        read_document(tmp_path / "missing.yaml")
    with pytest.raises(SpecError, match="is a directory"):
        read_document(tmp_path)
    path = tmp_path / "ok.yaml"
    path.write_text("a: 1\n")
    assert read_document(path).filename == str(path)


@pytest.mark.parametrize("data", [
    {"name": "x", "n": 3, "f": 0.25, "b": True, "none": None},
    {"strings": ["yes", "no", "1", "on", "null", "1e3", "a: b", "#c", ""]},
    {"nested": {"legs": {"i": 2, "j": 3}, "edges": [["A.a", "B.a"], ["A.b", "B.b"]]}},
    {"empty": {}, "empty_list": [], "mixed": [{"name": "normal", "std": 0.1}, "x"]},
])
def test_dump_yaml_round_trips(data: dict) -> None:
    text = dump_yaml(data)
    assert load_document(text).data == data
    assert list(load_document(text).data) == list(data)   # key order kept


def test_dump_yaml_is_block_style_with_inline_short_lists() -> None:
    text = dump_yaml({"network": {"nodes": {"A": {"legs": {"i": 2}}}, "outputs": ["A.i"]}})
    assert "outputs: [A.i]" in text
    assert "  nodes:\n" in text
