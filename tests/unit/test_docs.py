"""README.md and docs/*.md stand alone: they cite no file outside the repository, and every
repository path they cite exists.

What counts as a cited path (kept simple on purpose):
- a token inside an inline code span, a fenced code block, or a markdown link target;
- that contains a "/" and is not a URL, an absolute or home path, an environment variable or a
  placeholder (a component in capitals such as ROOT or NAME, `<id>`, `NNNN`, `%06d`);
- and that either starts with a top-level entry of the repository or a folder of the package
  (`mahler_dist/data/...`, `configs/...`, `data/loader.py`) or names a source or doc file by its
  extension (`.py`, `.md`, `.yaml`, ...). Run-time locations under a ROOT (`shards/index.json`,
  `pieces/*.npz`) and metres (`6/8`) are therefore not paths; neither are git-ignored outputs
  (`demo/`, `.venv/`).
A cited path exists when it (after brace expansion; globs must match something) resolves
against the repository root, the doc's folder or the package folder `mahler_dist/` (module
docstrings and docs name modules relative to the package).
"""

from __future__ import annotations

import fnmatch
import glob
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "mahler_dist"
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

#: References that send the reader outside the repository (the team's shared folder).
FORBIDDEN = re.compile(r"\.\./shared|shared/reference|/work/")
SOURCE_EXTENSIONS = {".py", ".md", ".yaml", ".yml", ".sh", ".toml", ".txt", ".cfg", ".ini"}

_FENCE = re.compile(r"^(```|~~~)")
_SPAN = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
_LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_TOKEN = re.compile(r"[A-Za-z0-9_.\-/*{},]+")
_PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*$|<|>|NNN|%\d*d")


def _ignored_names() -> list[str]:
    """The .gitignore patterns, as names to match a path's first component against."""
    gitignore = REPO / ".gitignore"
    if not gitignore.exists():
        return []
    lines = (line.strip() for line in gitignore.read_text().splitlines())
    return [line.strip("/") for line in lines if line and not line.startswith(("#", "!"))]


IGNORED = _ignored_names()


def _is_ignored(name: str) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in IGNORED)


def _top_level_names() -> set[str]:
    names = {p.name for p in REPO.iterdir() if p.name != ".git" and not _is_ignored(p.name)}
    return names | {p.name for p in PACKAGE.iterdir() if p.is_dir() and not _is_ignored(p.name)}


TOP_LEVEL = _top_level_names()


def _lines_with_candidates(text: str) -> list[tuple[int, str]]:
    """(line number, raw token) for every token in code spans, fenced blocks and link targets."""
    found, in_fence = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line.lstrip()):
            in_fence = not in_fence
            continue
        if in_fence:
            found += [(number, t) for t in _TOKEN.findall(line)]
            continue
        for span in _SPAN.findall(line):
            found += [(number, t) for t in _TOKEN.findall(span)]
        found += [(number, target) for target in _LINK.findall(line)]
    return found


def _clean(token: str) -> str:
    return token.split("#", 1)[0].strip("\"'()[],;:").rstrip(".")


def cited_path(token: str) -> str | None:
    """The repository path `token` cites, or None when it is not one (see the module docstring)."""
    token = _clean(token)
    if "/" not in token or "://" in token or token.startswith(("/", "~", "$")) or "$" in token:
        return None
    if token.count("{") != token.count("}"):   # a brace group cut by a space: not one path
        return None
    parts = [p for p in token.split("/") if p]
    if not parts or any(_PLACEHOLDER.search(p) for p in parts):
        return None
    first = parts[0].removeprefix("./")
    if first in ("..", ".") and len(parts) > 1:
        first = parts[1]
    if _is_ignored(first):
        return None
    if first in TOP_LEVEL or first == ".." or Path(parts[-1]).suffix in SOURCE_EXTENSIONS:
        return token
    return None


def _expand_braces(path: str) -> list[str]:
    m = re.search(r"\{([^{}]*)\}", path)
    if not m:
        return [path]
    return [p for alt in m.group(1).split(",") for p in _expand_braces(path[:m.start()] + alt + path[m.end():])]


def path_exists(path: str, doc: Path) -> bool:
    bases = (REPO, doc.parent, PACKAGE)
    for candidate in _expand_braces(path):
        for base in bases:
            hit = glob.glob(str(base / candidate), recursive=True)
            if any(REPO in Path(h).resolve().parents or Path(h).resolve() == REPO for h in hit):
                break
        else:
            return False
    return True


def missing_paths(doc: Path) -> list[str]:
    out = []
    for number, token in _lines_with_candidates(doc.read_text()):
        path = cited_path(token)
        if path is not None and not path_exists(path, doc):
            out.append(f"{doc.name}:{number}: {path}")
    return out


def forbidden_references(doc: Path) -> list[str]:
    return [f"{doc.name}:{n}: {line.strip()}" for n, line in enumerate(doc.read_text().splitlines(), 1)
            if FORBIDDEN.search(line)]


def _ids(paths: list[Path]) -> list[str]:
    return [p.relative_to(REPO).as_posix() for p in paths]


def test_the_docs_exist():
    assert (REPO / "docs" / "design.md").is_file()
    assert (REPO / "docs" / "representation.md").is_file()


@pytest.mark.parametrize("doc", DOCS, ids=_ids(DOCS))
def test_no_reference_outside_the_repository(doc):
    bad = forbidden_references(doc)
    hint = (" - README.md must stand alone: put what it needs into docs/ and cite that"
            if doc.name == "README.md" else "")
    assert not bad, f"{doc.name} sends readers outside the repository{hint}:\n" + "\n".join(bad)


@pytest.mark.parametrize("doc", DOCS, ids=_ids(DOCS))
def test_cited_paths_exist(doc):
    bad = missing_paths(doc)
    hint = (" - fix README.md's references (or create the files they name)"
            if doc.name == "README.md" else "")
    assert not bad, f"{doc.name} cites paths that are not in the repository{hint}:\n" + "\n".join(bad)


@pytest.mark.parametrize("token, expected", [
    ("mahler_dist/data/loader.py", "mahler_dist/data/loader.py"),
    ("data/loader.py", "data/loader.py"),                     # relative to the package
    ("configs/small.yaml", "configs/small.yaml"),
    ("jobs/{preprocess,train}.py", "jobs/{preprocess,train}.py"),
    ("config/small.yaml", "config/small.yaml"),               # a typo is still a path (and missing)
    ("ROOT/builds/<id>/shards/", None),
    ("ROOT/runs/NAME/metrics.jsonl", None),
    ("shards/index.json", None),                              # inside a ROOT, not the repository
    ("6/8", None),
    ("https://example.org/a/b.md", None),
    ("/mnt/shared/mahler", None),
    ("demo/runs/x", None),                                    # git-ignored output
    ("$MAHLER_SHARED_DATA/x.mid", None),
])
def test_path_detection(token, expected):
    assert cited_path(token) == expected


def test_path_resolution():
    readme = REPO / "README.md"
    assert path_exists("mahler_dist/music/vocab.py", readme)
    assert path_exists("music/*.py", readme)
    assert path_exists("jobs/{preprocess,train,generate}.py", readme)
    assert not path_exists("config/small.yaml", readme)
    assert not path_exists("jobs/{train,no_such_job}.py", readme)
