"""
`services.firmware.SharedImages`: one copy per distinct image among the updates under way.
"""

from __future__ import annotations

from devicecloud.services.firmware import SharedImages


def test_equal_content_is_held_once_and_let_go_after_its_last_update() -> None:
    images = SharedImages()
    first = bytes(range(256)) * 64
    second = bytearray(first)  # equal content, another object
    key_a, held_a = images.hold(first)
    key_b, held_b = images.hold(bytes(second))
    assert key_a == key_b
    assert held_a is first
    assert held_b is first
    other_key, _other = images.hold(b"another image")
    assert other_key != key_a
    assert (images.distinct, images.updates, images.nbytes) == (2, 3, len(first) + len(b"another image"))
    images.release(key_a)
    assert (images.distinct, images.updates) == (2, 2)
    images.release(key_b)
    images.release(other_key)
    assert (images.distinct, images.updates, images.nbytes) == (0, 0, 0)
    images.release(key_a)  # one release too many changes nothing
    assert images.distinct == 0


def test_the_held_object_itself_is_found_again_and_a_new_one_after_release() -> None:
    images = SharedImages()
    data = b"\x01" * 1000
    key, _ = images.hold(data)
    again, held = images.hold(data)
    assert (again, held) == (key, data)
    images.release(key)
    images.release(key)
    fresh = bytes(bytearray(b"\x02" * 1000))
    fresh_key, held = images.hold(fresh)
    assert held is fresh
    assert fresh_key != key
