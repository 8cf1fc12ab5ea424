"""Every results block of README.md and docs/*.md matches the JSON it names (demos/docs_tables.py --check), and the
check catches a tampered block (the negative controls)."""

from __future__ import annotations

import importlib.util
import re

import pytest

from helpers.paths import REPO_ROOT as ROOT



@pytest.fixture(scope="module")
def docs_tables():
    spec = importlib.util.spec_from_file_location("docs_tables", ROOT / "demos" / "docs_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tamper(text: str, kind: str) -> str:
    """``text`` with one digit changed inside the first block of ``kind`` (``table=`` or ``value=``)."""
    match = next(m for m in re.finditer(r"<!-- results: (.*?) -->(.*?)<!-- /results -->", text, re.DOTALL)
                 if f"{kind}=" in m[1])
    digit = re.search(r"\d", match[2])
    assert digit, f"no figure in the block {match[1]!r}"
    position = match.start(2) + digit.start()
    return text[:position] + str((int(text[position]) + 1) % 10) + text[position + 1:]


def test_every_block_matches_its_json(docs_tables, capsys):
    assert docs_tables.main(["--check"]) == 0, capsys.readouterr()


def test_the_docs_hold_blocks(docs_tables):
    files = docs_tables.doc_files(ROOT)
    blocks = sum(len(docs_tables.BLOCK.findall(path.read_text(encoding="utf-8"))) for path in files)
    assert blocks >= 20, "README and docs should show their figures through results blocks"


@pytest.mark.parametrize("kind", ["table", "value"])
def test_a_tampered_block_is_caught_and_regenerated(docs_tables, tmp_path, capsys, kind):
    original = (ROOT / "README.md").read_text(encoding="utf-8")
    copy = tmp_path / "README.md"
    copy.write_text(tamper(original, kind), encoding="utf-8")
    assert copy.read_text(encoding="utf-8") != original

    assert docs_tables.main(["--check", "--root", str(ROOT), str(copy)]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"out of date: {copy}:") and f"{kind}=" in out

    assert docs_tables.main(["--root", str(ROOT), str(copy)]) == 0
    assert copy.read_text(encoding="utf-8") == original
    assert docs_tables.main(["--check", "--root", str(ROOT), str(copy)]) == 0


@pytest.mark.parametrize("block, words", [
    ("<!-- results: docs/results/no_such_file.json table=compare -->\n<!-- /results -->", "not found"),
    ("<!-- results: docs/results/soak.json table=pie -->\n<!-- /results -->", "unknown table 'pie'"),
    ("<!-- results: docs/results/soak.json value=no/such/key -->x<!-- /results -->", "no 'no'"),
    ("<!-- results: docs/results/soak.json colour=red -->x<!-- /results -->", "unknown option 'colour'"),
    ("<!-- results: docs/results/soak.json table=soak -->\nno end marker", "without its"),
    ("<!-- results: docs/results/soak.json table=eval -->\n<!-- /results -->", "cannot render"),
])
def test_a_bad_block_is_one_line(docs_tables, tmp_path, capsys, block, words):
    page = tmp_path / "page.md"
    page.write_text(f"# page\n\n{block}\n", encoding="utf-8")
    assert docs_tables.main(["--check", "--root", str(ROOT), str(page)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and words in err, err


def test_markers_in_fenced_code_are_examples(docs_tables, tmp_path):
    text = "```\n<!-- results: docs/results/soak.json table=soak -->\nanything\n<!-- /results -->\n```\n"
    page = tmp_path / "page.md"
    page.write_text(text, encoding="utf-8")
    assert docs_tables.main(["--check", "--root", str(ROOT), str(page)]) == 0
    assert page.read_text(encoding="utf-8") == text
