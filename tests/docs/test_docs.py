"""The documentation is checked like code.

- every setting of `Settings` is in docs/configuration.md, under its environment
  variable, with the default the code has;
- every `oaksend` command and subcommand has a heading in docs/cli.md, and every
  option of it is named in that heading's section;
- every ```python block of README.md and docs/*.md runs as shown, in a fresh
  process, against a fresh migrated SQLite outbox and the test Redis;
- every relative link leads to a file that exists (and to a heading, for `#anchor`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import ROOT

README = ROOT / "README.md"
DOCS = ROOT / "docs"
#: The pages whose Python examples must run.
EXAMPLE_PAGES = [README, *sorted(DOCS.glob("*.md"))]
#: The pages whose links must lead somewhere.
LINKED_PAGES = [*EXAMPLE_PAGES, ROOT / "CHANGELOG.md"]
#: Seconds one example may take (imports, a migrated outbox, a few writes).
EXAMPLE_TIMEOUT_S = 120


# -- reading Markdown -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    language: str
    code: str

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


_FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")


def fenced_blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a page, with their language (lower case, "" when none)."""
    blocks: list[Block] = []
    lines = page.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        indent, fence, language = opening.groups()
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence[0] * len(fence)):
            body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j])
            j += 1
        blocks.append(Block(page, i + 1, language.lower(), "\n".join(body) + "\n"))
        i = j + 1
    return blocks


def prose(page: Path) -> str:
    """The page without its fenced blocks and inline code, where links are not links."""
    text = page.read_text(encoding="utf-8")
    for block in fenced_blocks(page):
        text = text.replace(block.code.rstrip("\n"), "")
    return re.sub(r"`[^`\n]*`", "", text)


def headings(page: Path) -> list[tuple[int, int, str]]:
    """(line index, level, text) of each ATX heading outside fenced blocks."""
    out = []
    in_fence = ""
    for i, line in enumerate(page.read_text(encoding="utf-8").splitlines()):
        fence = _FENCE.match(line)
        if fence:
            marker = fence.group(2)
            if not in_fence:
                in_fence = marker
            elif marker.startswith(in_fence):
                in_fence = ""
            continue
        if in_fence:
            continue
        match = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if match:
            out.append((i, len(match.group(1)), match.group(2)))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, _, text in headings(page):
        base = slug(text)
        n = seen.get(base, 0)
        out.add(base if n == 0 else f"{base}-{n}")
        seen[base] = n + 1
    return out


def table_rows(page: Path) -> Iterator[list[str]]:
    """The cells of every Markdown table row (an escaped `\\|` stays inside its cell)."""
    for line in page.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line.startswith("|") and line.endswith("|") and not re.fullmatch(r"[|\s:-]+", line):
            yield [cell.strip() for cell in re.split(r"(?<!\\)\|", line[1:-1])]


# -- 1. every setting is in docs/configuration.md ---------------------------------------------------
def _settings_fields() -> dict[str, Any]:
    from oaksend.worker.settings import Settings

    return dict(Settings.model_fields)


def env_names(name: str, field: Any) -> tuple[str, ...]:
    """The environment variables that set a field: its aliases, or the prefixed field name."""
    from pydantic import AliasChoices

    from oaksend.worker.settings import Settings

    alias = field.validation_alias or field.alias
    if alias is None:
        return ((str(Settings.model_config.get("env_prefix", "")) + name).upper(),)
    if isinstance(alias, str):
        return (alias.upper(),)
    if isinstance(alias, AliasChoices):
        return tuple(choice.upper() for choice in alias.choices if isinstance(choice, str))
    raise AssertionError(f"{name}: an alias of a kind this test does not read: {alias!r}")


def documented_settings() -> dict[str, tuple[str, str]]:
    """variable -> (default cell, meaning cell), from the tables of docs/configuration.md."""
    out = {}
    for cells in table_rows(DOCS / "configuration.md"):
        if len(cells) == 3:
            for variable in re.findall(r"`([A-Z][A-Z0-9_]+)`", cells[0]):
                out[variable] = (cells[1], cells[2])
    return out


def default_matches(cell: str, default: Any) -> bool:
    """Whether a documented default says what the code's default is."""
    words = cell.replace("`", "").split()
    first = words[0].rstrip(":,") if words else ""
    if default is None:
        return first in {"unset", "derived"}
    if isinstance(default, bool):
        return first == str(default).lower()
    if isinstance(default, (int, float)):
        try:
            return float(first.replace(",", "")) == float(default)
        except ValueError:
            return False
    if isinstance(default, dict):
        return first == json.dumps(default)
    return first == str(default)


@pytest.mark.parametrize("name", sorted(_settings_fields()))
def test_every_setting_is_in_the_configuration_page(name: str) -> None:
    field = _settings_fields()[name]
    names = env_names(name, field)
    documented = documented_settings()
    found = [n for n in names if n in documented]
    assert found, f"setting {name} ({' or '.join(names)}) is missing from docs/configuration.md"
    default_cell, meaning = documented[found[0]]
    assert meaning, f"{found[0]}: docs/configuration.md gives no meaning"
    default = field.get_default(call_default_factory=True)
    assert default_matches(default_cell, default), (
        f"{found[0]}: docs/configuration.md gives the default {default_cell!r}, the code {default!r}")


def test_the_configuration_page_names_no_setting_the_code_lacks() -> None:
    known = {n for name, field in _settings_fields().items() for n in env_names(name, field)}
    stale = sorted(set(documented_settings()) - known)
    assert not stale, f"docs/configuration.md documents settings that do not exist: {stale}"


# -- 2. every command is in docs/cli.md --------------------------------------------------------------
@dataclass(frozen=True)
class Command:
    path: str  # "oaksend campaign create"
    options: tuple[str, ...]  # the long (else short) form of each documented option


def _options(parser: argparse.ArgumentParser) -> tuple[str, ...]:
    out = []
    for action in parser._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
            continue
        longs = [o for o in action.option_strings if o.startswith("--")]
        out.append((longs or action.option_strings)[0])
    return tuple(out)


def commands(parser: argparse.ArgumentParser, path: str = "oaksend") -> Iterator[Command]:
    """Every command and subcommand: subparsers at any depth, and the choices of a positional
    action argument (`oaksend chatbot set-limit`)."""
    yield Command(path, _options(parser))
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, f"{path} {name}")
        elif not action.option_strings and action.choices is not None:
            for choice in action.choices:
                yield Command(f"{path} {choice}", ())


def _all_commands() -> list[Command]:
    from oaksend.worker.cli import build_parser

    return list(commands(build_parser()))


def section(page: Path, command: str) -> str | None:
    """The text under the heading that names `command` (up to the next heading of its level
    or above); None when no heading names it. The root command's section is the whole page."""
    lines = page.read_text(encoding="utf-8").splitlines()
    if command == "oaksend":
        return "\n".join(lines)
    marks = headings(page)
    for k, (start, level, text) in enumerate(marks):
        if re.search(rf"`{re.escape(command)}`", text):
            end = next((i for i, lv, _ in marks[k + 1:] if lv <= level), len(lines))
            return "\n".join(lines[start:end])
    return None


@pytest.mark.parametrize("command", _all_commands(), ids=lambda c: c.path)
def test_every_command_and_option_is_in_the_cli_page(command: Command) -> None:
    text = section(DOCS / "cli.md", command.path)
    assert text is not None, f"`{command.path}` has no heading in docs/cli.md"
    missing = [o for o in command.options if not re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", text)]
    assert not missing, f"docs/cli.md, section `{command.path}`, does not name {missing}"


# -- 3. every Python example runs ----------------------------------------------------------------------
def python_blocks() -> list[Block]:
    return [b for page in EXAMPLE_PAGES for b in fenced_blocks(page) if b.language in {"python", "py"}]


def run_example(code: str, tmp_path: Path, redis_url: str, name: str = "example") -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter, with a fresh migrated SQLite outbox, the test Redis and a
    placeholder API key and base URL (nothing listens there: examples enqueue, they do not send)."""
    from oaksend.migrations.runner import upgrade

    work = tmp_path / "app"
    work.mkdir()
    url = f"sqlite:///{work / 'outbox.db'}"
    upgrade(url)
    script = work / "example.py"
    script.write_text(f"# {name}\n{code}", encoding="utf-8")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OAKSEND_", "NEWOAKS_", "PYTHON")) and k not in {"DATABASE_URL", "REDIS_URL"}}
    env.update(DATABASE_URL=url, REDIS_URL=redis_url, NEWOAKS_API_KEY="docs-example-key",
               NEWOAKS_BASE_URL="http://127.0.0.1:9", PYTHONUNBUFFERED="1")
    # In its own directory: no .env of this checkout, and files it writes stay in tmp_path.
    return subprocess.run([sys.executable, str(script)], cwd=work, env=env, capture_output=True, text=True,
                          timeout=EXAMPLE_TIMEOUT_S)


def test_the_docs_have_python_examples() -> None:
    """Guard against a vacuous pass: the README and the quickstart show code that runs."""
    pages = {b.page for b in python_blocks()}
    assert README in pages and DOCS / "quickstart.md" in pages and DOCS / "campaigns.md" in pages


@pytest.mark.parametrize("block", python_blocks(), ids=lambda b: b.name)
def test_every_python_example_runs(block: Block, tmp_path: Path, redis_url: str) -> None:
    done = run_example(block.code, tmp_path, redis_url, block.name)
    assert done.returncode == 0, (
        f"the ```python block at {block.name} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")


@pytest.mark.parametrize("code,error", [
    ("from oaksend import Producr\n", "ImportError"),
    ("from oaksend import Producer, load_settings\n"
     "Producer(load_settings()).send('3254a9d0424c4806b9ea3d0763a1b2c3', '+14155550123', 'hi', key='k')\n",
     "TypeError"),
], ids=["wrong-import", "wrong-keyword"])
def test_a_wrong_example_fails(code: str, error: str, tmp_path: Path, redis_url: str) -> None:
    """The runner above can fail: an example with a wrong import or keyword does."""
    done = run_example(code, tmp_path, redis_url)
    assert done.returncode != 0 and error in done.stderr, done.stderr[-2000:]


# -- 4. every relative link leads somewhere ------------------------------------------------------------
_LINK = re.compile(r"\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)|^\s*\[[^\]\n]+\]:\s*(\S+)", re.M)


def relative_links(page: Path) -> list[str]:
    targets = [a or b for a, b in _LINK.findall(prose(page))]
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.I)]  # not http:, mailto:, ...


@pytest.mark.parametrize("page", LINKED_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_leads_somewhere(page: Path) -> None:
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no such heading in {dest.relative_to(ROOT)})")
    assert not broken, f"{page.relative_to(ROOT)}: broken links: {broken}"
