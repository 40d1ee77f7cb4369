"""Generate the Python protobuf/gRPC package from proto/ into libs/proto/src.

Run through the Makefile (`make proto`); the output is never edited by hand and
is not committed. Produces *_pb2.py, *_pb2_grpc.py and typed stubs (.pyi).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from google.api import annotations_pb2  # google/api/{annotations,http}.proto ship in this wheel
from grpc_tools import protoc  # type: ignore[import-untyped]  # tool-only dependency

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
OUT = ROOT / "libs" / "proto" / "src"


def main() -> int:
    package_dir = OUT / "strongroom"
    if package_dir.exists():
        shutil.rmtree(package_dir)
    package_dir.mkdir(parents=True)
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    # The REST rules (google.api.http, ADR 0052) import google/api/annotations.proto: compiled against
    # the files of googleapis-common-protos, whose generated modules the runtime imports in turn.
    googleapis = Path(annotations_pb2.__file__).parent.parent.parent
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"-I{googleapis}",
        f"--python_out={OUT}",
        f"--grpc_python_out={OUT}",
        f"--mypy_out={OUT}",
        f"--mypy_grpc_out={OUT}",
        *protos,
    ]
    code = protoc.main(args)
    if code != 0:
        print("protoc failed", file=sys.stderr)
        return int(code)
    for directory in [package_dir, *[p for p in package_dir.rglob("*") if p.is_dir()]]:
        (directory / "__init__.py").touch()
    (package_dir / "py.typed").touch()
    print(f"generated {len(protos)} proto files into {package_dir.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
