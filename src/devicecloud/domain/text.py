"""
What counts as text: a Python ``str`` that has a UTF-8 form. ``json.loads('"\\ud800"')`` yields a lone
surrogate, which has none; strict UTF-8 decoding never does. Streams, devices, webhooks and databases can take
nothing else, so every door checks with this one function.
"""

from __future__ import annotations


def is_valid_text(text: str) -> bool:
    """
    True when ``text`` can be written as UTF-8, i.e. holds no lone surrogate.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
