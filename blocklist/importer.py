"""Parse an import file (text or CSV) into entries, all or nothing, with FILE:LINE errors.

Text: one URL a line; blank lines and lines starting with "#" are skipped.
CSV: a header row naming `url` and optionally `scope`, `subdomains`, `reason`, `ref`.
`subdomains` (true/false, yes/no, 1/0; empty: the command's default) gives a page or
folder row subdomain reach (blocklist.core.digests.Reach).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from blocklist.core.digests import Entry, Reach, Scope, make_new_entry
from blocklist.core.errors import BlocklistError

MAX_LINE = 8192
CSV_COLUMNS = {"url", "scope", "subdomains", "reason", "ref"}
_TRUE, _FALSE = {"true", "yes", "1"}, {"false", "no", "0"}


class ImportFileError(BlocklistError):
    """Every bad line of a file; nothing was imported."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path, self.problems = path, problems
        super().__init__(f"{path}: {len(problems)} bad line(s); nothing imported")


@dataclass(frozen=True)
class ImportItem:
    entry: Entry
    reason: str
    ref: str
    line: int


def _is_csv(path: Path, first: str) -> bool:
    return path.suffix.lower() == ".csv" or first.lower().replace(" ", "").startswith("url,")


def _rows(path: Path, text: str) -> Iterator[tuple[int, dict[str, str]]]:
    lines = text.splitlines()
    first = next((line for line in lines if line.strip() and not line.lstrip().startswith("#")), "")
    if not _is_csv(path, first):
        for number, line in enumerate(lines, 1):
            stripped = line.strip()
            if stripped and not stripped.startswith("#"):
                yield number, {"url": stripped}
        return
    reader = csv.reader(io.StringIO(text))
    header: list[str] | None = None
    for row in reader:
        number = reader.line_num
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        if header is None:
            header = [h.strip().lower() for h in row]
            unknown = set(header) - CSV_COLUMNS
            if "url" not in header or unknown:
                raise ImportFileError(str(path), [f"{path}:{number}: CSV header must name url and may name "
                                                  f"scope, subdomains, reason, ref (got {', '.join(header)})"])
            continue
        if len(row) != len(header):
            yield number, {"error": f"expected {len(header)} columns, got {len(row)}"}
            continue
        yield number, {k: v.strip() for k, v in zip(header, row, strict=False)}


def _reach(value: str, default: Reach) -> Reach:
    """A row's reach from its `subdomains` cell; ValueError if the cell says neither yes nor no."""
    value = value.lower()
    if not value:
        return default
    if value in _TRUE:
        return Reach.SUBDOMAINS
    if value in _FALSE:
        return Reach.EXACT if default is Reach.EXACT else Reach.TWIN
    raise ValueError(value)


def parse_file(path: Path, default_scope: Scope, tick: Callable[[int], None] = lambda n: None,
               default_reach: Reach = Reach.TWIN) -> list[ImportItem]:
    """All entries of `path`, or ImportFileError naming every bad line."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ImportFileError(str(path), [f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})"]) from None
    except OSError as exc:
        raise ImportFileError(str(path), [f"{path}: {exc.strerror}"]) from None
    items: list[ImportItem] = []
    problems: list[str] = []
    seen: set[tuple[Scope, Reach, str]] = set()
    for number, row in _rows(path, text):
        tick(1)
        if "error" in row:
            problems.append(f"{path}:{number}: {row['error']}")
            continue
        url = row.get("url", "")
        if len(url) > MAX_LINE:
            problems.append(f"{path}:{number}: line longer than {MAX_LINE} characters")
            continue
        try:
            scope = Scope(row["scope"].lower()) if row.get("scope") else default_scope
        except ValueError:
            problems.append(f"{path}:{number}: unknown scope {row['scope']!r} (page, folder or domain)")
            continue
        try:
            reach = _reach(row.get("subdomains", ""), default_reach)
        except ValueError:
            problems.append(f"{path}:{number}: subdomains must be true or false, not {row['subdomains']!r}")
            continue
        try:
            entry = make_new_entry(url, scope, reach)
        except BlocklistError as exc:
            problems.append(f"{path}:{number}: {exc}")
            continue
        if (entry.scope, entry.reach, entry.key) in seen:
            continue  # the same entry twice in one file is one entry
        seen.add((entry.scope, entry.reach, entry.key))
        items.append(ImportItem(entry, row.get("reason", ""), row.get("ref", ""), number))
    if problems:
        raise ImportFileError(str(path), problems)
    return items
