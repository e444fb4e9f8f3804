"""The generated protobuf modules import and expose the declared services."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO_ROOT / "protos"
PROTO_FILES = sorted(p.relative_to(PROTO_ROOT) for p in PROTO_ROOT.rglob("*.proto"))


def _module_name(proto: Path, suffix: str) -> str:
    parts = proto.with_suffix("").parts
    return "bulkhead.proto." + ".".join(parts) + suffix


def test_protos_exist() -> None:
    assert PROTO_FILES


@pytest.mark.parametrize("proto", PROTO_FILES, ids=str)
def test_protos_generated_modules_import(proto: Path) -> None:
    messages = importlib.import_module(_module_name(proto, "_pb2"))
    stubs = importlib.import_module(_module_name(proto, "_pb2_grpc"))
    for service in messages.DESCRIPTOR.services_by_name:
        assert hasattr(stubs, f"{service}Stub"), f"{service}Stub missing"
        assert hasattr(stubs, f"add_{service}Servicer_to_server")
