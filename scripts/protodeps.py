"""Lay out the third-party .proto files numfed imports, from the installed packages.

googleapis-common-protos ships google/api/*.proto, google/rpc/*.proto and google/type/*.proto
(google.type.Date for calendar dates); it ships the long-running operations contract as
``operations_proto.proto`` although it is registered as ``google/longrunning/operations.proto``,
so it is copied under its registered name. protoc's well-known types come from grpc_tools.
Nothing is downloaded.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import google.api
import google.longrunning
import google.rpc
import google.type
import grpc_tools


def main(out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    for pkg, sub in (
        (google.api, "google/api"),
        (google.rpc, "google/rpc"),
        (google.type, "google/type"),
    ):
        src = Path(next(iter(pkg.__path__)))
        dst = out / sub
        dst.mkdir(parents=True)
        for proto in src.glob("*.proto"):
            shutil.copy(proto, dst / proto.name)
    lro = out / "google/longrunning"
    lro.mkdir(parents=True)
    shutil.copy(
        Path(next(iter(google.longrunning.__path__))) / "operations_proto.proto",
        lro / "operations.proto",
    )
    wkt = Path(next(iter(grpc_tools.__path__))) / "_proto/google/protobuf"
    shutil.copytree(wkt, out / "google/protobuf")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
