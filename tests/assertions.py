"""Assertions shared by the test modules."""

from __future__ import annotations

import pytest


def one_line_error(call, kind: type[BaseException] = ValueError) -> str:
    """The message ``call()`` raises ``kind`` with, checked to be one non-empty line."""
    with pytest.raises(kind) as info:
        call()
    message = str(info.value)
    assert message and "\n" not in message
    return message
