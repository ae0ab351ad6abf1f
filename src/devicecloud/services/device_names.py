"""
Generated device names (``hungry_otter``), as the cloud gives a device on its first connection.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Awaitable, Callable

ADJECTIVES = (
    "agile",
    "amber",
    "bold",
    "brave",
    "bright",
    "calm",
    "clever",
    "cosmic",
    "crisp",
    "daring",
    "eager",
    "fuzzy",
    "gentle",
    "giddy",
    "happy",
    "hungry",
    "jolly",
    "keen",
    "lively",
    "lucky",
    "mellow",
    "mighty",
    "nimble",
    "plucky",
    "proud",
    "quick",
    "quiet",
    "rapid",
    "rusty",
    "shiny",
    "silly",
    "sleepy",
    "snappy",
    "sparkly",
    "spry",
    "sunny",
    "swift",
    "tidy",
    "witty",
    "zesty",
)
NOUNS = (
    "badger",
    "beaver",
    "bison",
    "cobra",
    "condor",
    "coyote",
    "crane",
    "dingo",
    "eagle",
    "falcon",
    "ferret",
    "gecko",
    "heron",
    "ibis",
    "jaguar",
    "koala",
    "lemur",
    "lynx",
    "marmot",
    "moose",
    "narwhal",
    "ocelot",
    "otter",
    "panda",
    "parrot",
    "puffin",
    "quokka",
    "raven",
    "robin",
    "salmon",
    "tapir",
    "tiger",
    "toucan",
    "turtle",
    "walrus",
    "weasel",
    "wombat",
    "yak",
    "zebra",
)
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,63}$")


def generate_name() -> str:
    """
    A random two-word name; callers retry when it is taken.
    """
    return f"{secrets.choice(ADJECTIVES)}_{secrets.choice(NOUNS)}"


def is_valid_name(name: str) -> bool:
    """
    Names are 1–63 letters, digits, underscores and dashes (what the Particle console accepts).
    """
    return bool(NAME_PATTERN.match(name))


async def free_name(taken: Callable[[str], Awaitable[bool]], *, tries: int = 20) -> str:
    """
    A generated name ``taken`` says is free. The two-word space holds ~1,560 names, so an owner with many
    devices soon exhausts it: after ``tries`` clashes, a random suffix makes the name unique.
    """
    for _ in range(tries):
        name = generate_name()
        if not await taken(name):
            return name
    while True:
        name = f"{generate_name()}_{secrets.token_hex(3)}"
        if not await taken(name):
            return name
