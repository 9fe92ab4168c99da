"""The fair reference for durable acceptance: a bare grpc.aio server that commits one row per call.

It serves ``ReleaseBindings`` on the gateway's own method path with the gateway's mTLS
credentials, so the benchmark's client (the same channel, stub and requests) calls it exactly as
it calls the gateway. Each call's request (the release claim and its request id, as bytes) is one
row, committed before the answer with the gateway's own group commit: calls arriving during a
commit share the next transaction (:class:`gateway.batcher.Batcher`, at most 256 rows, one
transaction at a time on SQLite and four on PostgreSQL, on the gateway's database threads). No
claim verification, no job, no tasks, no audit record: what the gateway does beyond this is its
cost of accepting a release.

    python -m bench.commit_server PKI_DIR DATABASE_URL    # prints its port, then serves
"""

from __future__ import annotations

import asyncio
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import sqlalchemy as sa
from google.longrunning import operations_pb2

from gateway.batcher import Batcher
from gateway.store import DB_WORKERS
from numfed import pki
from numfed.db import DbThread, sqlite_engine
from numfed.serving import tune_gc

METHOD = "ReleaseBindings"
SERVICE = "numfed.v1.GatewayService"


def _identity(b: bytes) -> bytes:
    return b


class CommitServer:
    def __init__(self, url: str) -> None:
        sqlite = url.startswith("sqlite")
        self.engine = (
            sqlite_engine(url) if sqlite else sa.create_engine(url, pool_size=DB_WORKERS + 2)
        )
        meta = sa.MetaData()
        self.table = sa.Table(
            f"accepted_{secrets.token_hex(4)}",
            meta,
            sa.Column("id", sa.String(32), primary_key=True),
            sa.Column("body", sa.LargeBinary, nullable=False),
        )
        meta.create_all(self.engine)
        self.thread = DbThread("commit", 1 if sqlite else DB_WORKERS)
        self.commits: Batcher[tuple[str, bytes], str] = Batcher(
            self._commit, max_items=256, max_in_flight=1 if sqlite else 4
        )

    def _insert(self, rows: Sequence[tuple[str, bytes]]) -> None:
        with self.engine.begin() as c:
            c.execute(sa.insert(self.table), [{"id": i, "body": b} for i, b in rows])

    async def _commit(self, rows: Sequence[tuple[str, bytes]], _timeout: float) -> list[str]:
        await self.thread.run(self._insert, list(rows))
        return [i for i, _b in rows]

    async def release(self, request: bytes, context: Any) -> bytes:
        row_id = await self.commits.submit((secrets.token_hex(16), request), 30.0)
        answer: bytes = operations_pb2.Operation(name=f"operations/{row_id}").SerializeToString()
        return answer


async def serve(pki_dir: Path, url: str) -> None:
    commit = CommitServer(url)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE,
                {METHOD: grpc.unary_unary_rpc_method_handler(commit.release, _identity, _identity)},
            ),
        )
    )
    port = server.add_secure_port("127.0.0.1:0", pki.server_credentials(pki_dir, pki.GATEWAY))
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    tune_gc()  # as the gateway's process (numfed.serving)
    asyncio.run(serve(Path(sys.argv[1]), sys.argv[2]))
