"""The documentation runs as written: README.md and docs/*.md, the code's citations, the docstrings.

- Every ```python block of a page runs, in order, in one namespace per page (a page may build a tiny
  model once and use it in later blocks), in a temporary working folder.
- Every line of a ```bash block is checked against what it names: `atomgen …` parses with the real
  command line parser, `make X` is a target of the Makefile, `python bench/X.py` and other scripts exist.
- Every `method.md §N` the code cites is a heading of docs/method.md.
- Every relative link opens a file of the repository, and every `#anchor` a heading of its page.
- No page names a tracker's issue or dates a measurement by the history of the work.
- Blocks under an HTML comment (`<!-- … -->`) are not documentation yet and are skipped.
"""

from __future__ import annotations

import doctest
import re
import shlex
from pathlib import Path

import pytest

import atomgen.baselines
import atomgen.hooks
import atomgen.separation
from atomgen.cli import build_parser

ROOT = Path(__file__).parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "results" / "README.md"]
CODE_DIRS = ("atomgen", "pipelines", "eval", "bench", "tests", "configs")


def blocks(page: Path, language: str) -> list[tuple[int, str]]:
    """The ```language blocks of a page outside HTML comments, with the line each starts on."""
    text = re.sub(r"<!--.*?-->", lambda m: "\n" * m.group().count("\n"), page.read_text(), flags=re.S)
    return [
        (text.count("\n", 0, match.start()) + 1, match.group(1))
        for match in re.finditer(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)
    ]


def _id(page: Path) -> str:
    return str(page.relative_to(ROOT))


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p, "python")], ids=_id)
def test_python_blocks_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # whatever a block writes lands here
    namespace = {"__name__": "__docs__"}
    for line, code in blocks(page, "python"):
        try:
            exec(compile(code, f"{_id(page)}:{line}", "exec"), namespace)
        except Exception as error:
            raise AssertionError(f"the python block at {_id(page)}:{line} failed: {error!r}") from error


def test_no_untested_python_fences():
    """Python shown as ```py or ```python3 would escape the runner: every page uses ```python."""
    for page in PAGES:
        for fence in re.findall(r"^```(\w+)", page.read_text(), flags=re.M):
            assert fence in ("python", "bash", "text", "yaml", "json"), f"{_id(page)}: ```{fence} block"


def _commands(code: str) -> list[list[str]]:
    """The commands of a bash block: continuation lines joined, comments and `VAR=value` prefixes dropped."""
    commands = []
    for line in code.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
            words = words[1:]
        if words:
            commands.append(words)
    return commands


MAKE_TARGETS = set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), flags=re.M))
OTHER_COMMANDS = {"pip", "apt-get", "sudo", "accelerate", "git", "cd", "ls", "tensorboard"}


def _check_command(words: list[str], where: str) -> None:
    if words[0] == "make":
        assert all(target in MAKE_TARGETS for target in words[1:]), f"{where}: no such make target: {words}"
    elif words[0] == "atomgen" or words[:3] == ["python", "-m", "atomgen"] or "atomgen" in words[1:3]:
        start = words.index("atomgen") + 1
        try:
            build_parser().parse_args(words[start:])
        except SystemExit as exit_:
            raise AssertionError(f"{where}: `{shlex.join(words)}` does not parse") from exit_
    elif words[0] == "accelerate" and words[1:2] in (["config"], ["env"]):
        pass  # accelerate's own set-up commands
    elif words[0] == "accelerate":
        assert "-m" in words and words[words.index("-m") + 1] == "atomgen", f"{where}: {words}"
        _check_command(words[words.index("-m") + 1 :], where)
    elif words[0] in ("python", "python3") or words[0].endswith(".sh"):
        script = next((w for w in words if w.endswith((".py", ".sh"))), None)
        if script is not None and words[1:2] != ["-m"]:
            assert (ROOT / script).is_file(), f"{where}: {script} does not exist"
    else:
        assert words[0] in OTHER_COMMANDS, f"{where}: unknown command {words[0]!r}; add it to the checks"


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p, "bash")], ids=_id)
def test_bash_blocks_name_what_exists(page):
    for line, code in blocks(page, "bash"):
        for words in _commands(code):
            _check_command(words, f"{_id(page)}:{line}")


def test_readme_is_a_user_readme():
    text = README.read_text()
    lines = text.splitlines()
    assert len(lines) <= 220, f"README.md has {len(lines)} lines; the reference belongs in docs/"
    first_screen = "\n".join(lines[:60])
    assert "pip install -e ." in first_screen
    assert first_screen.count("```python") >= 3, (
        "the quick start's three snippets belong in the first 60 lines"
    )
    for page in (
        "docs/method.md",
        "docs/training.md",
        "docs/sampling.md",
        "docs/evaluation.md",
        "docs/benchmarks.md",
        "results/README.md",
    ):
        assert f"({page}" in text or f"]({page})" in text, f"README.md does not link {page}"


def _relative_links(page: Path) -> list[tuple[str, str]]:
    """``(path, anchor)`` of every link to a file of the repository (the page itself when no path)."""
    text = re.sub(r"<!--.*?-->", "", page.read_text(), flags=re.S)
    links = re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", text)
    return [(target or page.name, anchor) for target, anchor in links if "://" not in target]


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+ (.*)$", re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M), re.M)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize("page", PAGES, ids=_id)
def test_relative_links_resolve(page):
    for target, anchor in _relative_links(page):
        path = page.parent / target
        assert path.exists(), f"{_id(page)} links {target}, which does not exist"
        if anchor and path.suffix == ".md":
            assert anchor in _anchors(path), f"{_id(page)} links {target}#{anchor}: no such heading"


# Documentation states the target, or the measurement with its command and machine: never a tracker's
# number or the history of the work.
HISTORY = re.compile(
    r"\bissues?\b|(?<![\w/&])#\d+|\bsessions?\b|\blast time\b|\bso far\b|\bfirst probe\b|\bround (?:two|three)\b",
    re.I,
)


@pytest.mark.parametrize("page", PAGES, ids=_id)
def test_no_issue_numbers_and_no_history(page):
    found = [
        (number, line) for number, line in enumerate(page.read_text().splitlines(), 1) if HISTORY.search(line)
    ]
    assert not found, f"{_id(page)}: {found}"


def _cited_sections() -> dict[str, list[str]]:
    """``§N``, ``§N.M`` and ranges (``§2–5``, ``§2.1–2``) cited as method.md in the code, expanded."""
    cited: dict[str, list[str]] = {}
    for folder in CODE_DIRS:
        for path in (ROOT / folder).rglob("*.py"):
            for match in re.finditer(r"method\.md §(\d+)(?:\.(\d+))?(?:[–-](\d+))?", path.read_text()):
                major, minor, end = match.groups()
                if minor is None:
                    numbers = [str(n) for n in range(int(major), int(end or major) + 1)]
                else:
                    numbers = [f"{major}.{n}" for n in range(int(minor), int(end or minor) + 1)]
                for number in numbers:
                    cited.setdefault(number, []).append(str(path.relative_to(ROOT)))
    return cited


def test_every_cited_section_of_method_md_is_a_heading():
    headings = re.findall(
        r"^#{2,4} (\d+(?:\.\d+)?)\.? ", (ROOT / "docs" / "method.md").read_text(), flags=re.M
    )
    cited = _cited_sections()
    assert len(cited) >= 9, "the code cites method.md: the pattern must find the citations"
    missing = {number: files for number, files in cited.items() if number not in headings}
    assert not missing, f"cited in the code but not a heading of docs/method.md: {missing}"


@pytest.mark.parametrize("module", [atomgen.separation, atomgen.hooks, atomgen.baselines])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
