"""Keep the documents' quotes of generated reports identical to the reports (never typed by hand).

    python -m reports.quote [FILE.md ...]           # rewrite every quote block from its source
    python -m reports.quote --check [FILE.md ...]   # exit 1, naming the stale block, if one differs

Without a file: README.md and every docs/*.md (docs/DEMO.md and docs/STUDY.md quote the reports).

A quote block is the text between two markers, written as Markdown comments::

    <!-- quote: reports/demo/index.md#What the numbers say -->
    > ... (generated: the section "## What the numbers say" of that file, as a blockquote)
    <!-- /quote -->

The source is a path relative to the quoting file's folder, optionally ``#Heading``: the section
under ``## Heading`` up to the next ``## `` heading (without the heading itself); without it, the
whole file. Relative links and images in the quoted text are rewritten to stay valid from the
quoting file (``forest.png`` becomes ``../reports/demo/forest.png`` in docs/DEMO.md).
``tests/reports/test_reports.py`` runs ``--check`` on this repository's documents, so a rebuilt report
that is not re-quoted fails the suite.

A quote reads and writes only inside its own tree (the git work tree holding the document, else the
document's folder): a source is resolved (symlinks and ``..`` followed) and refused unless it stays
in that tree and is a regular file (a FIFO would block); a document keeps its line endings (CRLF
stays CRLF); quote blocks inside a source are left out of what is quoted, so a document that quotes
itself (or two that quote each other) reach a fixed point instead of growing on every run.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from plumbing.atomic import write_bytes_atomic
from plumbing.safe_read import UnreadableFile, read_regular_text

MAX_BYTES = 8 << 20  # a Markdown document or report section; anything larger is not one

_BLOCK = re.compile(r"^(<!-- quote: (?P<source>[^>]+?) -->\n)(?P<body>.*?)^(<!-- /quote -->)$", re.S | re.M)
_OPEN = re.compile(r"<!-- quote: [^>]+? -->")  # a whole line: an opener
_CLOSE = "<!-- /quote -->"  # a whole line: a closer
_LINK = re.compile(r"\]\((?![a-z][a-z0-9+.-]*:|/|#)(?P<target>[^)\s]+)\)")  # relative link targets only


class QuoteError(ValueError):
    """A quote block whose source cannot be read or has no such section: one line."""


def section(text: str, heading: str | None) -> str:
    """The whole text, or the body of its ``## heading`` section."""
    if heading is None:
        return text
    match = re.search(rf"^## {re.escape(heading)}[ \t]*\n(?P<body>.*?)(?=^## |\Z)", text, re.M | re.S)
    if match is None:
        raise QuoteError(f"no section '## {heading}'")
    return match.group("body")


def tree_of(document: Path) -> Path:
    """The tree a document may quote from: the git work tree holding it, else its own folder."""
    folder = document.resolve().parent
    return next((p for p in (folder, *folder.parents) if (p / ".git").exists()), folder)


def read_text(path: Path, what: str) -> str:
    """A regular file's text with its line endings as \\n (never blocks on a FIFO; one-line errors)."""
    try:
        return read_regular_text(path, what, MAX_BYTES).replace("\r\n", "\n")
    except UnreadableFile as e:
        raise QuoteError(str(e)) from None


def quoted(source: str, root: Path, tree: Path | None = None) -> str:
    """The blockquote a marker's ``source`` stands for, links rewritten relative to ``root``; the source
    must resolve inside ``tree`` (default ``root``'s tree)."""
    rel, _, heading = source.partition("#")
    tree = (tree or tree_of(root / "x")).resolve()
    path = (root / rel).resolve()
    if not path.is_relative_to(tree):
        raise QuoteError(f"{rel}: resolves to {path}, outside the document's tree {tree}; only files of this "
                         "tree are quoted")
    text = _BLOCK.sub("", read_text(path, rel))  # quote blocks in the source are not quoted again
    try:
        body = section(text, heading or None).strip("\n")
    except QuoteError as e:
        raise QuoteError(f"{rel}: {e}") from None
    folder = Path(rel).parent.as_posix()
    if folder != ".":
        body = _LINK.sub(lambda m: f"]({folder}/{m.group('target')})", body)
    return "".join(f"> {line}\n" if line else ">\n" for line in body.split("\n"))


def check_markers(text: str, where: str) -> None:
    """Every ``<!-- quote: … -->`` line is closed by a ``<!-- /quote -->`` line before the next opener,
    and every closer has an opener: else QuoteError naming the line (an unclosed opener would pass
    hand-typed text as quoted, or let the next block's closer swallow the text in between). A marker
    mentioned inside a line of prose is no marker."""
    opened = 0  # line number of the open quote, 0 when none is open
    for number, line in enumerate(text.split("\n"), 1):
        if _OPEN.fullmatch(line):
            if opened:
                raise QuoteError(f"{where}:{opened}: the quote opened here is not closed by <!-- /quote --> "
                                 f"before the next quote (line {number})")
            opened = number
        elif line == _CLOSE:
            if not opened:
                raise QuoteError(f"{where}:{number}: <!-- /quote --> without a <!-- quote: SOURCE --> line before it")
            opened = 0
    if opened:
        raise QuoteError(f"{where}:{opened}: the quote opened here is not closed by <!-- /quote --> before the end "
                         "of the file")


def sync(readme: Path) -> tuple[str, list[str]]:
    """(README with every block re-quoted, in its own line endings; the sources whose block changed)."""
    try:
        raw = read_regular_text(readme, "document", MAX_BYTES)
    except UnreadableFile as e:
        hint = " (expected a Markdown file with quote blocks)" if "UTF-8" in str(e) else ""
        raise QuoteError(f"{readme}: {str(e).split(f'{readme}: ', 1)[-1]}{hint}") from None
    crlf = "\r\n" in raw
    text = raw.replace("\r\n", "\n")
    tree = tree_of(readme)
    check_markers(text, str(readme))
    stale: list[str] = []

    def replace(m: re.Match) -> str:
        source = m.group("source").strip()
        try:
            body = quoted(source, readme.parent, tree)
        except QuoteError as e:
            raise QuoteError(f"{readme}: quote of {e}") from None
        if body != m.group("body"):
            stale.append(source)
        return m.group(1) + body + m.group(4)

    text = _BLOCK.sub(replace, text)
    return (text.replace("\n", "\r\n") if crlf else text), stale


def default_files(root: Path = Path(".")) -> list[Path]:
    """README.md and every docs/*.md under ``root`` (those that exist)."""
    return [p for p in (root / "README.md", *sorted((root / "docs").glob("*.md"))) if p.is_file()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reports.quote", description=__doc__.split("\n\n")[0])
    p.add_argument("files", nargs="*", type=Path, help="Markdown files with quote blocks (default: README.md, docs/*.md)")
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if a block is stale")
    args = p.parse_args(argv)
    code = 0
    for path in args.files or default_files():
        if not path.exists():
            p.error(f"{path}: no such file (expected a Markdown file with quote blocks)")
        code = max(code, _one(path, args.check))
    return code


def _one(path: Path, check: bool) -> int:
    try:
        text, stale = sync(path)
    except QuoteError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if check:
        for source in stale:
            print(f"{path}: the quote of {source} differs from its source; run python -m reports.quote {path}",
                  file=sys.stderr)
        return 1 if stale else 0
    if stale:
        write_bytes_atomic(path, text.encode("utf-8"))  # as read: CRLF stays CRLF
    print(f"{path}: {len(stale)} quote block(s) updated" if stale else f"{path}: quotes up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
