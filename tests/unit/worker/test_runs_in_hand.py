"""RunsInHand: one task at a time per run in one worker process."""

from __future__ import annotations

import pytest

from bulkhead.worker.runs import RunsInHand

RUN = "0b7e6d1c-4c1a-4d4e-9a8e-5f0c2a1b3c4d"
OTHER = "5d2f8a90-7e3b-4c6d-8f1a-2b9c0d4e6f7a"


def test_runs_in_hand_second_hold_rejected() -> None:
    in_hand = RunsInHand()

    with in_hand.hold(RUN) as first, in_hand.hold(RUN) as second:
        assert first
        assert not second


def test_runs_in_hand_rejected_hold_keeps_first() -> None:
    in_hand = RunsInHand()

    with in_hand.hold(RUN) as first:
        assert first
        with in_hand.hold(RUN) as rejected:
            assert not rejected
        # The rejected holder has left its block, and the run is still in hand.
        with in_hand.hold(RUN) as third:
            assert not third


def test_runs_in_hand_released_after_block() -> None:
    in_hand = RunsInHand()

    with in_hand.hold(RUN) as first:
        assert first
    with in_hand.hold(RUN) as again:
        assert again


def test_runs_in_hand_released_when_block_raises() -> None:
    in_hand = RunsInHand()

    with pytest.raises(RuntimeError), in_hand.hold(RUN) as held:
        assert held
        raise RuntimeError("handler failed")

    with in_hand.hold(RUN) as again:
        assert again


def test_runs_in_hand_ids_independent() -> None:
    in_hand = RunsInHand()

    with in_hand.hold(RUN) as first, in_hand.hold(OTHER) as other:
        assert first
        assert other
    with in_hand.hold(OTHER) as other_again:
        assert other_again
        with in_hand.hold(RUN) as first_again:
            assert first_again
