"""How bulkhead.worker.runs settles a task whose run it did not claim."""

from __future__ import annotations

from bulkhead.proto.chat.v1 import run_service_pb2 as run_pb
from bulkhead.worker.loop import Action
from bulkhead.worker.runs import skip_outcome


def test_skip_outcome_claimed_runs_handler() -> None:
    claim = run_pb.ClaimRunResponse(outcome=run_pb.CLAIM_OUTCOME_CLAIMED)

    assert skip_outcome(claim) is None


def test_skip_outcome_leased_naks_until_last_delivery() -> None:
    claim = run_pb.ClaimRunResponse(outcome=run_pb.CLAIM_OUTCOME_LEASED)

    earlier = skip_outcome(claim, last_delivery=False)
    last = skip_outcome(claim, last_delivery=True)

    assert earlier is not None
    assert earlier.action is Action.NAK
    assert earlier.delay_s is not None
    assert last is not None
    assert last.action is Action.ACK


def test_skip_outcome_finished_run_acks() -> None:
    claim = run_pb.ClaimRunResponse(outcome=run_pb.CLAIM_OUTCOME_FINISHED)

    outcome = skip_outcome(claim, last_delivery=True)

    assert outcome is not None
    assert outcome.action is Action.ACK
