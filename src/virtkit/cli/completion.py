"""Bash completion generated from the argument parser itself, so it never drifts.

Commands and their flags come from argparse; domain names are completed live
with ``virtkit list --all --name``.
"""

from __future__ import annotations

import argparse


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _flags(parser: argparse.ArgumentParser) -> list[str]:
    return sorted(opt for action in parser._actions for opt in action.option_strings
                  if opt.startswith("--"))


def _takes_domain(parser: argparse.ArgumentParser) -> bool:
    return any(action.dest == "domain" for action in parser._actions)


def bash_completion(parser: argparse.ArgumentParser) -> str:
    commands = _subparsers(parser)
    cases = []
    for name, sub in sorted(commands.items()):
        words = " ".join(_flags(sub) + sorted(_subparsers(sub)))
        domain = "1" if _takes_domain(sub) else "0"
        cases.append(f'        {name}) opts="{words}"; domain={domain} ;;')
    case_block = "\n".join(cases)
    return f"""# bash completion for virtkit; install with:
#   virtkit completion bash > /etc/bash_completion.d/virtkit
_virtkit() {{
    local cur cmd opts domain i
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    cmd=""
    for ((i=1; i<COMP_CWORD; i++)); do
        case "${{COMP_WORDS[i]}}" in -*) ;; *) cmd="${{COMP_WORDS[i]}}"; break ;; esac
    done
    if [[ -z "$cmd" ]]; then
        COMPREPLY=( $(compgen -W "{' '.join(sorted(commands))} --root --version --help" -- "$cur") )
        return
    fi
    opts=""; domain=0
    case "$cmd" in
{case_block}
    esac
    if [[ "$cur" == -* || $domain == 0 ]]; then
        COMPREPLY=( $(compgen -W "$opts" -- "$cur") )
    else
        COMPREPLY=( $(compgen -W "$(virtkit list --all --name 2>/dev/null) $opts" -- "$cur") )
    fi
}}
complete -F _virtkit virtkit
"""
