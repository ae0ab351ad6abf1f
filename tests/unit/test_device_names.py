"""
Generated device names stay unique per owner however many devices the owner has.
"""

from __future__ import annotations

from devicecloud.services.device_names import ADJECTIVES, NOUNS, free_name, is_valid_name


async def test_names_past_the_two_word_space() -> None:
    """With every two-word name taken, free_name still finds a valid, unused one."""
    taken = {f"{a}_{n}" for a in ADJECTIVES for n in NOUNS}

    async def is_taken(name: str) -> bool:
        return name in taken

    names = set()
    for _ in range(200):
        name = await free_name(is_taken)
        assert is_valid_name(name)
        taken.add(name)
        names.add(name)
    assert 200 == len(names)
