"""Per-route limits on the runs one executor serves at once."""

from __future__ import annotations

import pytest

from executor_service.route_slots import RouteSlots, route_limit


def test_route_slots_full_route_rejected() -> None:
    slots = RouteSlots(2)

    with (
        slots.take("hung") as first,
        slots.take("hung") as second,
        slots.take("hung") as third,
    ):
        assert first
        assert second
        assert not third
        assert slots.in_use("hung") == 2

    assert slots.in_use("hung") == 0


def test_route_slots_released_after_block() -> None:
    slots = RouteSlots(1)

    with slots.take("solo") as taken:
        assert taken
        assert slots.in_use("solo") == 1
    with slots.take("solo") as again:
        assert again


def test_route_slots_released_when_block_raises() -> None:
    slots = RouteSlots(1)

    with pytest.raises(RuntimeError), slots.take("solo") as taken:
        assert taken
        raise RuntimeError("model call failed")

    assert slots.in_use("solo") == 0
    with slots.take("solo") as again:
        assert again


def test_route_slots_rejected_take_keeps_nothing() -> None:
    slots = RouteSlots(1)

    with slots.take("solo"):
        with slots.take("solo") as rejected:
            assert not rejected
        # Leaving the rejected block releases nothing of the first one.
        assert slots.in_use("solo") == 1
        with slots.take("solo") as still_rejected:
            assert not still_rejected


def test_route_slots_count_routes_separately() -> None:
    slots = RouteSlots(1)

    with slots.take("hung") as hung, slots.take("backup") as backup:
        assert hung
        assert backup
        with slots.take("hung") as second_hung:
            assert not second_hung
        assert slots.in_use("hung") == 1
        assert slots.in_use("backup") == 1
        assert slots.in_use("bulkhead-echo") == 0


def test_route_slots_never_count_empty_route() -> None:
    slots = RouteSlots(1)

    with slots.take("") as first, slots.take("") as second, slots.take("") as third:
        assert first
        assert second
        assert third
        assert slots.in_use("") == 0
        with slots.take("solo") as named:
            assert named


@pytest.mark.parametrize(
    ("concurrency", "expected"),
    [(1, 1), (2, 1), (3, 2), (4, 3), (8, 6), (32, 24), (256, 192)],
)
def test_route_limit_default_leaves_a_quarter(concurrency: int, expected: int) -> None:
    assert route_limit(concurrency, 0, routes=3) == expected


@pytest.mark.parametrize("concurrency", [1, 2, 32])
def test_route_limit_lone_route_uses_every_slot(concurrency: int) -> None:
    assert route_limit(concurrency, 0, routes=1) == concurrency


@pytest.mark.parametrize(("concurrency", "configured"), [(32, 5), (4, 1), (8, 8)])
def test_route_limit_configured_value_wins(concurrency: int, configured: int) -> None:
    assert route_limit(concurrency, configured, routes=3) == configured


def test_route_limit_capped_at_concurrency() -> None:
    assert route_limit(4, 8, routes=3) == 4


@pytest.mark.parametrize("limit", [0, -1])
def test_route_slots_limit_below_one_rejected(limit: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RouteSlots(limit)
