"""Generate Python modules and type stubs from protos/ into bulkhead/proto/.

protoc writes imports relative to the proto root (``from chat.v1 import ...``),
so this script rewrites them to absolute imports under ``bulkhead.proto``.
The generated tree is build output and is not committed.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT = ROOT / "bulkhead" / "proto"
PACKAGES = ("chat", "agent", "executor")
_IMPORT_RE = re.compile(
    rf"^(\s*)(from|import) ({'|'.join(PACKAGES)})\.(v\d+)", re.MULTILINE
)


def main() -> int:
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    sources = sorted(
        str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto")
    )
    well_known = Path(protoc.__file__).parent / "_proto"
    # mypy-protobuf installs its plugins next to the interpreter.
    bin_dir = Path(sys.executable).parent
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{well_known}",
            f"--plugin=protoc-gen-mypy={bin_dir / 'protoc-gen-mypy'}",
            f"--plugin=protoc-gen-mypy_grpc={bin_dir / 'protoc-gen-mypy_grpc'}",
            f"--python_out={OUT}",
            f"--grpc_python_out={OUT}",
            f"--mypy_out={OUT}",
            f"--mypy_grpc_out={OUT}",
            *sources,
        ]
    )
    if status != 0:
        print(f"protoc failed with exit status {status}", file=sys.stderr)
        return status

    for path in OUT.rglob("*.py*"):
        text = path.read_text()
        path.write_text(_IMPORT_RE.sub(r"\1\2 bulkhead.proto.\3.\4", text))
    for directory in [OUT, *(p for p in OUT.rglob("*") if p.is_dir())]:
        (directory / "__init__.py").touch()
    print(f"generated {len(sources)} proto files into {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
