"""``errors.one_line``: the one line that stands for an exception, in the CLI and in a failing rank."""

from __future__ import annotations

from ddtrain.errors import one_line


def test_lines_are_stripped_and_joined_and_blank_lines_dropped():
    exc = RuntimeError("Could not override 'x'.\n\n   To append to your config use +x=1  \n")
    assert one_line(exc) == "RuntimeError: Could not override 'x'.; To append to your config use +x=1"


def test_typed_false_gives_the_message_alone():
    assert one_line(ValueError("a\nb"), typed=False) == "a; b"


def test_an_empty_message_is_the_type_name():
    assert one_line(KeyError()) == "KeyError"
    assert one_line(OSError(""), typed=False) == "OSError"


def test_long_messages_are_cut_and_say_so():
    line = one_line(RuntimeError("x" * 2000), limit=100)
    assert line == "RuntimeError: " + "x" * 97 + "..."
    assert one_line(RuntimeError("y" * 100), limit=100) == "RuntimeError: " + "y" * 100  # at the limit: kept
