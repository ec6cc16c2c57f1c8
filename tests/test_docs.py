"""Every document the project cites exists: `docs/methods.md §N` names a section of docs/methods.md, `docs/<name>.md`
names a file in docs/, links between the docs resolve, and nothing cites a file outside the repository."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
METHODS = DOCS / "methods.md"
SCANNED = ("gendiv", "eval", "tests", "docs", "configs", "pipelines")
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".txt", ".cfg", ".toml", ".sh"}

HEADING = re.compile(r"^#{2,6}\s+(\d+(?:\.\d+)*)[.\s]", re.M)
SECTION = r"\d+(?:\.\d+)*"
DASH = r"\s*(?:[–—-]|to)\s*§?"
# one or more section references after the file name: §1 | §1–2 | §§1-3 | §1, §3 | §1 and §2 | §0.4
REFS = re.compile(rf"(?:\s*(?:,|and|or|&)?\s*§{{1,2}}\s*{SECTION}(?:{DASH}{SECTION})?(?:\s*,\s*{SECTION}(?!\w))*)+")
ONE_REF = re.compile(rf"({SECTION})(?:{DASH}({SECTION}))?")
DOC_FILE = re.compile(r"(?<![\w/.-])docs/([\w./-]+?\.md)\b")
MD_LINK = re.compile(r"\]\(([\w./-]+\.md)(?:#[^)]*)?\)")
OUTSIDE = re.compile(r"shared/docs|(?<![\w/.-])research/[\w-]+\.md")


def sections(text: str) -> set[str]:
    """Section numbers of a Markdown document: `## 2. Title` → "2", `### 2.1 Title` → "2.1"."""
    return set(HEADING.findall(text))


def cited_sections(refs: str) -> list[str]:
    """The sections a run of references names; integer ranges are expanded (§1–3 → 1, 2, 3)."""
    out = []
    for start, end in ONE_REF.findall(refs):
        if end and "." not in start + end and int(start) <= int(end):
            out += [str(n) for n in range(int(start), int(end) + 1)]
        else:
            out += [start] + ([end] if end else [])
    return out


def methods_citations(text: str):
    """(line, form_ok, sections) for every mention of methods.md in ``text``."""
    for m in re.finditer(r"methods\.md", text):
        if text.startswith(" §N", m.end()):  # the form itself, written as a placeholder
            continue
        refs = REFS.match(text, m.end())
        in_docs_form = text[max(0, m.start() - 5):m.start()] == "docs/"
        line = text.count("\n", 0, m.start()) + 1
        yield line, in_docs_form and refs is not None, cited_sections(refs.group(0)) if refs else []


def project_files():
    files = [ROOT / "README.md"]
    for top in SCANNED:
        files += [p for p in sorted((ROOT / top).rglob("*")) if p.is_file() and p.suffix in SUFFIXES
                  and "__pycache__" not in p.parts and p.resolve() != Path(__file__).resolve()]
    return [p for p in files if p.exists()]


def dangling_methods_citations(files, known: set[str]) -> tuple[list[str], list[str], int]:
    """(citations of a missing section, citations not written `docs/methods.md §N` (code only), number checked).

    Markdown files may name methods.md otherwise (docs link to it relatively, the README lists it); their section
    references are still checked."""
    missing, badly_formed, count = [], [], 0
    for path in files:
        text = path.read_text(errors="replace")
        for line, form_ok, cited in methods_citations(text):
            count += 1
            where = f"{path.relative_to(ROOT) if ROOT in path.parents else path}:{line}"
            if not form_ok and path.suffix != ".md":
                badly_formed.append(f"{where}: write `docs/methods.md §N`")
            missing += [f"{where}: §{s} is not a section of docs/methods.md" for s in cited if s not in known]
    return missing, badly_formed, count


def test_parser_reads_every_citation_form():
    assert cited_sections(" §1") == ["1"]
    assert cited_sections(" §1–2") == ["1", "2"]
    assert cited_sections(" §§0-3") == ["0", "1", "2", "3"]
    assert cited_sections(" §1, §10") == ["1", "10"]
    assert cited_sections(" §1 and §2.3") == ["1", "2.3"]
    assert cited_sections(" §0.4–0.6") == ["0.4", "0.6"]
    text = "see docs/methods.md §1–2 and methods.md §4; (docs/methods.md), docs/methods.md §0.4, §9; docs/methods.md §N"
    assert [(form, cited) for _, form, cited in methods_citations(text)] == [
        (True, ["1", "2"]), (False, ["4"]), (False, []), (True, ["0.4", "9"])]
    assert sections("## 0. A\n### 0.4 B\n#### 12.1.3 C\n# 7 title\n") == {"0", "0.4", "12.1.3"}


def test_checker_reports_a_missing_section_and_a_bare_citation(tmp_path):
    code = tmp_path / "mod.py"
    code.write_text('"""x (docs/methods.md §1–3), y (methods.md §2)."""\n')
    missing, badly_formed, count = dangling_methods_citations([code], {"1", "2"})
    assert count == 2
    assert len(missing) == 1 and "§3" in missing[0]
    assert len(badly_formed) == 1 and ":1:" in badly_formed[0]


def test_methods_md_has_the_sections_the_code_relies_on():
    known = sections(METHODS.read_text())
    assert {"0", "1", "2", "3", "4", "5", "8", "10"} <= known


def test_every_methods_citation_names_a_section_that_exists():
    missing, badly_formed, count = dangling_methods_citations(project_files(), sections(METHODS.read_text()))
    assert count >= 30, f"only {count} citations of docs/methods.md found: is the scan still reading the sources?"
    assert not missing, "citations of missing sections:\n" + "\n".join(missing)
    assert not badly_formed, "citations not in the form `docs/methods.md §N`:\n" + "\n".join(badly_formed)


def test_every_cited_doc_file_exists():
    dangling = []
    for path in project_files():
        text = path.read_text(errors="replace")
        for m in DOC_FILE.finditer(text):
            if not (DOCS / m.group(1)).is_file():
                dangling.append(f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}: docs/{m.group(1)}")
        if path.suffix == ".md":
            for m in MD_LINK.finditer(text):
                if not (path.parent / m.group(1)).is_file():
                    dangling.append(f"{path.relative_to(ROOT)}: link to {m.group(1)}")
    assert not dangling, "references to documents that do not exist:\n" + "\n".join(dangling)


@pytest.mark.parametrize("name", ["uni_instruct.md", "reflected.md", "guidance_free.md"])
def test_methods_md_links_the_other_method_notes(name):
    assert f"]({name})" in METHODS.read_text()


def test_nothing_cites_a_file_outside_the_repository():
    outside = []
    for path in project_files():
        text = path.read_text(errors="replace")
        outside += [f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}"
                    for m in OUTSIDE.finditer(text)]
    assert not outside, "citations of background notes that are not part of the project:\n" + "\n".join(outside)


def test_every_test_the_docs_name_exists():
    """A document that names a test as its evidence must not outlive the test (renamed or removed)."""
    sources = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("*.py"))
    defined = set(re.findall(r"def (test_\w+)", sources)) | {p.stem for p in (ROOT / "tests").glob("test_*.py")}
    named = {(path.name, name) for path in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
             for name in re.findall(r"\b(test_\w+)\b", path.read_text())}
    missing = sorted(f"{where}: {name}" for where, name in named if name not in defined)
    assert len(named) >= 10, "the docs name hardly any tests: is the scan still reading them?"
    assert not missing, "the docs name tests that do not exist:\n" + "\n".join(missing)
