"""The request plane's liveness state machine (dynamo_triton.liveness), on a fake clock."""

from __future__ import annotations

import pytest

from dynamo_triton.liveness import FORGET_AFTER, Liveness, Tick


class FakeClock:
    """A clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def run(liveness: Liveness, clock: FakeClock, ticks: int) -> list[Tick]:
    """``ticks`` ticks, one interval apart, as the transports drive them."""
    seen = []
    for _ in range(ticks):
        clock.now += liveness.interval
        seen.append(liveness.tick())
    return seen


def test_a_peer_that_keeps_talking_is_never_pinged_nor_unresponsive() -> None:
    clock = FakeClock()
    liveness = Liveness(1.0, clock)
    for _ in range(20):
        clock.now += liveness.interval / 2
        liveness.alive()
        clock.now += liveness.interval / 2
        assert liveness.tick() is Tick.NOTHING
    assert not liveness.unresponsive


def test_quiet_peer_is_pinged_once_then_unresponsive_after_the_heartbeat_then_probed_once_a_heartbeat() -> None:
    clock = FakeClock()
    liveness = Liveness(1.0, clock)
    ticks = run(liveness, clock, 12)
    assert ticks[0] == Tick.PING  # one interval of quiet
    assert ticks[1] == ticks[2] == Tick.NOTHING  # one ping per quiet spell
    assert ticks[3] == Tick.UNRESPONSIVE | Tick.PROBE  # heartbeat reached: reported once
    assert liveness.unresponsive and liveness.unresponsive_since == pytest.approx(101.0)
    assert [t for t in ticks[4:]] == [Tick.NOTHING] * 3 + [Tick.PROBE] + [Tick.NOTHING] * 3 + [Tick.PROBE]
    assert liveness.silent_for() == pytest.approx(3.0)


def test_repeat_pings_pings_on_every_quiet_tick() -> None:
    clock = FakeClock()
    liveness = Liveness(1.0, clock, repeat_pings=True)
    ticks = run(liveness, clock, 5)
    assert all(t & Tick.PING for t in ticks)
    assert [bool(t & Tick.UNRESPONSIVE) for t in ticks] == [False, False, False, True, False]


def test_the_first_sign_of_life_makes_it_healthy_and_says_for_how_long_it_was_not() -> None:
    clock = FakeClock()
    liveness = Liveness(2.0, clock)
    run(liveness, clock, 8)  # 4 s of quiet: unresponsive since 102
    assert liveness.unresponsive
    assert liveness.alive() == pytest.approx(2.0)
    assert not liveness.unresponsive
    assert liveness.alive() is None  # only the first one ends it
    ticks = run(liveness, clock, 4)
    assert ticks[0] == Tick.PING and ticks[3] == Tick.UNRESPONSIVE | Tick.PROBE  # a new quiet spell, from scratch


def test_a_late_tick_is_no_evidence_against_the_peer() -> None:
    clock = FakeClock()
    liveness = Liveness(1.0, clock)
    clock.now += 5.0  # this process's loop was blocked for 5 heartbeats
    assert liveness.tick() is Tick.NOTHING
    assert not liveness.unresponsive
    ticks = run(liveness, clock, 4)
    assert ticks[3] & Tick.UNRESPONSIVE  # the quiet counts again from the late tick


def test_a_late_tick_keeps_an_unresponsive_verdict() -> None:
    clock = FakeClock()
    liveness = Liveness(1.0, clock)
    run(liveness, clock, 4)
    clock.now += 5.0
    liveness.tick()
    assert liveness.unresponsive


def test_an_unresponsive_peer_is_forgotten_after_forget_after_only_when_idle() -> None:
    clock = FakeClock()
    liveness = Liveness(1.0, clock)
    run(liveness, clock, 4)
    clock.now += FORGET_AFTER
    assert not liveness.forgotten(idle=True)  # not past it yet
    clock.now += 0.5
    assert liveness.forgotten(idle=True)
    assert not liveness.forgotten(idle=False)
    liveness.alive()
    assert not liveness.forgotten(idle=True)


def test_a_healthy_peer_is_never_forgotten() -> None:
    clock = FakeClock()
    liveness = Liveness(1.0, clock)
    clock.now += 10 * FORGET_AFTER
    assert not liveness.forgotten(idle=True)


def test_no_heartbeat_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="heartbeat must be > 0"):
        Liveness(0.0, FakeClock())
