"""Docs that cannot drift: every command (walked from the click group, so a new command is
covered without editing this file) has help text, answers --help with exit 0, and is in the
README; the README documents the exit codes and the set-up commands; the spool format doc
names every directory."""

import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from queuectl.cli import main

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SPOOL_FORMAT = ROOT / "docs" / "spool-format.md"


def walk(group, path=()):
    """(path, command) for every command and group under `group`, hidden ones excepted.
    Through click's list_commands/get_command, as the command line finds them (the top
    group loads most of its commands on demand)."""
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if command.hidden:
            continue
        yield (*path, name), command
        if isinstance(command, click.Group):
            yield from walk(command, (*path, name))


COMMANDS = list(walk(main))
IDS = [" ".join(path) for path, _ in COMMANDS]


def read(path):
    if not path.exists():
        pytest.fail(f"{path.relative_to(ROOT)} does not exist yet")
    return path.read_text(encoding="utf-8")


def test_the_walk_finds_the_commands_of_this_issue():
    assert {"enqueue", "list", "status", "show", "dlq", "dlq list", "dlq retry", "config",
            "config show", "config set", "config unset", "reindex"} <= set(IDS)


@pytest.mark.parametrize("path, command", COMMANDS, ids=IDS)
def test_every_command_has_help_text(path, command):
    assert (command.help or "").strip(), f"`queuectl {' '.join(path)}` has no help text"
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            assert (param.help or "").strip(), \
                f"option {param.opts[0]} of `queuectl {' '.join(path)}` has no help text"


@pytest.mark.parametrize("path, command", COMMANDS, ids=IDS)
def test_every_command_answers_help(path, command):
    result = CliRunner().invoke(main, [*path, "--help"], prog_name="queuectl")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"Usage: queuectl {' '.join(path)} ")
    first_line = command.help.strip().splitlines()[0]
    assert first_line.split()[0] in result.stdout


@pytest.mark.parametrize("path, command", COMMANDS, ids=IDS)
def test_every_command_help_shows_an_example(path, command):
    """The issue: every command has `--help` that explains and shows an example."""
    result = CliRunner().invoke(main, [*path, "--help"], prog_name="queuectl")
    assert re.search(r"^\s*Examples?:", result.stdout, re.M), \
        f"`queuectl {' '.join(path)} --help` shows no example"


def test_top_level_help():
    result = CliRunner().invoke(main, ["--help"], prog_name="queuectl")
    assert result.exit_code == 0 and result.stdout.startswith("Usage: queuectl ")
    for path, _ in COMMANDS:
        if len(path) == 1:
            assert re.search(rf"^\s+{re.escape(path[0])}\s", result.stdout, re.M)


@pytest.mark.parametrize("path", [path for path, _ in COMMANDS], ids=IDS)
def test_every_command_appears_in_the_readme(path):
    text = read(README)
    # As `queuectl dlq retry ...` in an example or `dlq retry ...` in the reference table.
    pattern = r"(?:queuectl\s+(?:--\S+\s+\S+\s+)*|`)" + r"\s+".join(map(re.escape, path)) + \
        r"(?![\w-])"
    assert re.search(pattern, text), f"README.md does not mention `queuectl {' '.join(path)}`"


def test_readme_documents_the_exit_codes():
    text = read(README)
    section = re.search(r"^#+ *Exit codes\s*$(.*?)(?=^#)", text, re.M | re.S | re.I)
    assert section, "README.md has no 'Exit codes' section"
    for code in ("0", "1", "2"):
        assert re.search(rf"(^|\|)\s*`?{code}`?\s*(\||:|-)", section.group(1), re.M), \
            f"exit code {code} is not in the README's table"


def test_readme_gives_the_two_setup_commands():
    text = read(README)
    assert "make test" in text and "make demo" in text


def test_spool_format_doc_names_every_directory():
    text = read(SPOOL_FORMAT)
    for directory in ("tmp", "pending", "processing", "failed", "completed", "dead",
                      "rejected", "output"):
        assert f"{directory}/" in text, f"docs/spool-format.md does not mention {directory}/"
