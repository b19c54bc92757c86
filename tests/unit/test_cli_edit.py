"""The error note ``virtkit edit`` puts on a refused spec: every line commented, and
taken out whole before the next try (a YAML parser's message spans several lines)."""

from __future__ import annotations

import yaml

from virtkit.cli.edit import ERROR_END, ERROR_START, strip_error, with_error

SPEC = "name: a\nmemory:\n  current: 256\n"


def _yaml_error(text: str) -> str:
    try:
        yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return str(exc)
    raise AssertionError("the text parses")


def test_a_multi_line_message_is_commented_line_by_line() -> None:
    message = _yaml_error("a: [1\nb: 2\n")
    assert "\n" in message
    shown = with_error(SPEC, message)
    note = shown.splitlines()[:shown.splitlines().index(ERROR_END) + 1]
    assert note[0] == ERROR_START and all(line.startswith("#") for line in note)
    assert yaml.safe_load(shown) == yaml.safe_load(SPEC)


def test_notes_do_not_pile_up_and_strip_gives_back_the_spec() -> None:
    once = with_error(SPEC, "first\nproblem")
    twice = with_error(once, "second problem")
    assert twice.count(ERROR_START) == 1 and "# first" not in twice
    assert strip_error(twice) == SPEC


def test_the_users_own_comments_stay() -> None:
    spec = "# my note\n" + SPEC
    assert strip_error(with_error(spec, "bad")) == spec
    assert strip_error(spec) == spec


def test_the_xml_note_is_one_comment_without_double_dashes() -> None:
    from xml.etree import ElementTree

    from virtkit.cli.edit import XML_NOTES

    xml = "<domain type='kvm'><name>a</name></domain>\n"
    shown = with_error(xml, "line 1 -- column 2\nmismatched tag", XML_NOTES)
    assert ElementTree.fromstring(shown).find("name").text == "a"  # type: ignore[union-attr]
    assert strip_error(with_error(shown, "again", XML_NOTES), XML_NOTES) == xml
