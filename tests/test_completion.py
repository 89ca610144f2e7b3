"""Shell completion for `blocklist` and `blocklist-plugin`, through click's own mechanism.

`_BLOCKLIST_COMPLETE=bash_source blocklist` (and `_BLOCKLIST_PLUGIN_COMPLETE=...` for
`blocklist-plugin`) prints a bash script; the installed console scripts are run with it,
the script is sourced into a real bash, and its completion function is called as bash calls
it on <Tab>: it must offer every command, the subcommands of a group and a command's options.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest

from blocklist.cli import main as blocklist_main
from resolver_plugin.cli import main as plugin_main
from tests.conftest import require_program

SCRIPTS = Path(sys.executable).parent
CLIS = {"blocklist": blocklist_main, "blocklist-plugin": plugin_main}


@functools.cache
def source(prog: str, shell: str) -> str:
    """What `_PROG_COMPLETE=<shell>_source prog` prints (exit 0)."""
    var = "_" + prog.upper().replace("-", "_") + "_COMPLETE"
    result = subprocess.run([str(SCRIPTS / prog)], env={**os.environ, var: f"{shell}_source"}, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def complete(prog: str, *words: str) -> list[str]:
    """What bash offers for `prog words...` on <Tab> (the last word is the one being completed)."""
    function = "_" + prog.replace("-", "_") + "_completion"
    script = (source(prog, "bash") +  # as `eval "$(_PROG_COMPLETE=bash_source prog)"` in .bashrc
              'COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1))\n'
              f'{function} {prog} "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}" 2>/dev/null\n'
              'printf "%s\\n" "${COMPREPLY[@]}"\n')
    result = subprocess.run([require_program("bash"), "--norc", "-c", script, prog, prog, *words],
                            env={**os.environ, "PATH": f"{SCRIPTS}:{os.environ.get('PATH', '')}"},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if line]


def commands(group: click.Group) -> set[str]:
    return {name for name, command in group.commands.items() if not command.hidden}


@pytest.mark.parametrize("prog", sorted(CLIS))
def test_bash_source_is_a_completion_script_for_the_installed_command(prog: str) -> None:
    script = source(prog, "bash")
    function = "_" + prog.replace("-", "_") + "_completion"
    assert f"{function}() {{" in script and f"complete -o nosort -F {function} {prog}" in script
    check = subprocess.run([require_program("bash"), "-n"], input=script, capture_output=True, text=True,
                           timeout=60)
    assert check.returncode == 0, check.stderr


@pytest.mark.parametrize("prog", sorted(CLIS))
def test_tab_offers_every_command(prog: str) -> None:
    offered = complete(prog, "")
    assert set(offered) == commands(CLIS[prog]) and len(offered) >= 5


def test_tab_completes_subcommands_options_and_prefixes() -> None:
    assert complete("blocklist", "pu") == ["publish"]
    key = blocklist_main.commands["key"]
    assert isinstance(key, click.Group) and set(complete("blocklist", "key", "")) == commands(key)
    assert complete("blocklist-plugin", "-c", "/etc/blocklist/plugin.yaml", "sy") == ["sync"]
    assert "--once" in complete("blocklist-plugin", "sync", "--")
    assert "--scope" in complete("blocklist", "add", "--")


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_zsh_and_fish_get_their_scripts_too(shell: str) -> None:
    for prog in CLIS:
        assert prog in source(prog, shell)
