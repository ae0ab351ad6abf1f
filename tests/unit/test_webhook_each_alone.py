"""
`each_alone`: a batch that fails is retried item by item, so one bad item fails by itself.
"""

from __future__ import annotations

from collections.abc import Sequence

from devicecloud.webhooks.dispatcher import OUTAGE_AFTER, each_alone


async def test_one_bad_item_fails_alone_and_the_others_are_done() -> None:
    done: list[int] = []

    async def store(items: Sequence[int]) -> None:
        if 13 in items:
            raise ValueError("unlucky")  # the whole batch (one transaction) fails with it
        done.extend(items)

    assert [13] == await each_alone([1, 13, 2], store)
    assert [1, 2] == done


async def test_a_batch_that_succeeds_is_done_once() -> None:
    calls: list[Sequence[int]] = []

    async def store(items: Sequence[int]) -> None:
        calls.append(items)

    assert [] == await each_alone([1, 2, 3], store)
    assert [[1, 2, 3]] == calls


async def test_when_everything_fails_the_rest_is_not_tried_one_by_one() -> None:
    calls: list[Sequence[int]] = []

    async def store(items: Sequence[int]) -> None:
        calls.append(items)
        raise OSError("database unreachable")

    assert list(range(100)) == await each_alone(list(range(100)), store)
    assert 1 + OUTAGE_AFTER == len(calls)
