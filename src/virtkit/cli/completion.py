"""Bash completion generated from the argument parser itself, so it never drifts.

Commands and their flags come from argparse; domain names are completed live
with ``virtkit list --all --name``.  ``virtkit install`` takes virt-install's
comma-separated sub-options: ``--disk <TAB>`` offers ``path= size= format= ...``,
and after a comma the next key, from the parser's table of sub-options.
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


def _suboptions_function(table: dict[str, list[str]]) -> str:
    """A bash function completing ``--opt key=v,key=...``: it reads the raw line, as bash
    splits words at '=' and ':', and offers the keys of the option before the word
    (or before its '=') that start like the piece after the last comma."""
    cases = "\n".join(f'        {option}) keys="{" ".join(keys)}" ;;'
                      for option, keys in sorted(table.items()))
    return f"""_virtkit_suboptions() {{
    local line="${{COMP_LINE:0:COMP_POINT}}" raw word opt before base piece keys k
    local cands=()
    [[ -n "$line" ]] || return 1
    raw="${{line##*[[:space:]]}}"
    word="$raw"
    if [[ "$word" == --*=* ]]; then
        opt="${{word%%=*}}"; base="$opt="; word="${{word#*=}}"
    else
        before="${{line%"$raw"}}"
        before="${{before%"${{before##*[![:space:]]}}"}}"
        opt="${{before##*[[:space:]]}}"; base=""
    fi
    [[ "$word" == -* ]] && return 1
    case "$opt" in
{cases}
        *) return 1 ;;
    esac
    piece="${{word##*,}}"
    COMPREPLY=()
    [[ "$piece" == *=* ]] && return 0
    base="$base${{word%"$piece"}}"
    for k in $keys; do
        [[ "$k" == "$piece"* ]] && cands+=("$base$k=")
    done
    # bash replaces only the part of the word after its last '=' or ':'
    COMPREPLY=("${{cands[@]#"${{raw%"${{COMP_WORDS[COMP_CWORD]}}"}}"}}")
    compopt -o nospace 2>/dev/null
    return 0
}}
"""


def bash_completion(parser: argparse.ArgumentParser) -> str:
    from virtkit.cli.install import completion_suboptions

    commands = _subparsers(parser)
    cases = []
    for name, sub in sorted(commands.items()):
        words = " ".join(_flags(sub) + sorted(_subparsers(sub)))
        domain = "1" if _takes_domain(sub) else "0"
        cases.append(f'        {name}) opts="{words}"; domain={domain} ;;')
    case_block = "\n".join(cases)
    suboptions = _suboptions_function(completion_suboptions()) if "install" in commands else ""
    return f"""# bash completion for virtkit; install with:
#   virtkit completion bash > /etc/bash_completion.d/virtkit
{suboptions}_virtkit() {{
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
    if [[ "$cmd" == install ]] && _virtkit_suboptions; then
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
