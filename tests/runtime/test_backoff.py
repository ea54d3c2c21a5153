"""dynamo_triton.backoff: the pauses between retries, with an injected sleep."""

from __future__ import annotations

import pytest

from dynamo_triton.backoff import Backoff


class Sleeps:
    """An injected sleep that records each pause and returns at once."""

    def __init__(self) -> None:
        self.pauses: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.pauses.append(seconds)


async def test_pauses_double_up_to_the_cap() -> None:
    sleeps = Sleeps()
    backoff = Backoff(0.2, cap=1.0, sleep=sleeps)
    for _ in range(5):
        await backoff.wait()
    assert sleeps.pauses == pytest.approx([0.2, 0.4, 0.8, 1.0, 1.0])


async def test_delay_is_the_next_pause_and_reset_starts_over() -> None:
    sleeps = Sleeps()
    backoff = Backoff(0.5, sleep=sleeps)
    await backoff.wait()
    await backoff.wait()
    assert backoff.delay == 2.0
    backoff.reset()
    assert backoff.delay == 0.5
    await backoff.wait()
    assert sleeps.pauses == [0.5, 1.0, 0.5]


async def test_the_default_cap_is_five_seconds() -> None:
    sleeps = Sleeps()
    backoff = Backoff(0.5, sleep=sleeps)
    for _ in range(8):
        await backoff.wait()
    assert max(sleeps.pauses) == 5.0 and backoff.delay == 5.0


@pytest.mark.parametrize(("first", "cap"), [(0.0, 5.0), (-1.0, 5.0), (6.0, 5.0)])
def test_nonsense_bounds_are_refused(first: float, cap: float) -> None:
    with pytest.raises(ValueError, match="0 < first <= cap"):
        Backoff(first, cap=cap)
