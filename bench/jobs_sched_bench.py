#!/usr/bin/env python3
"""Jobs under load on PostgreSQL: fairness between tenants and bulk submission throughput, one run.

    python bench/jobs_sched_bench.py [--scenario all|fairness|bulk] [--duration 10] [--backlog 20000]

Each scenario starts, on a fresh schema of the local PostgreSQL (`INFERD_BENCH_PG`, default
`postgresql://postgres@127.0.0.1:5432/test`), one `inferd serve --no-worker` API process and two
`inferd worker` processes with the echo model (examples/models), and two tenants A and B.

* fairness: tenant A submits `--backlog` jobs (bulk requests of 1,000 lines), then tenant B submits 10;
  reported: seconds from B's submission until B's last job finished (from the store's timestamps),
  and how many of A's jobs were still pending then. Goal: B's 10 finish within 2 s.
* bulk: `--clients` concurrent clients post bulk requests of `--lines` jobs for `--duration` seconds
  (as tenant A, or with `--tenants 2` half of them as B, so that claims share between two tenants);
  reported: accepted jobs/s (jobs stored / submission time) and finished jobs/s end to end (jobs /
  (last finished - first submitted)), beside `pgbench -N` transactions/s (4 clients) in the same run.
  Goals: >= 10,000 jobs/s accepted, >= 5,000 jobs/s finished.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from jobs_bench import PG_DSN, ROOT, bench_pgbench  # noqa: E402
from servers import Processes, free_port, inferd_command, wait_ready  # noqa: E402

KEYS = "ka:A:jobs;kb:B:jobs"
LINE = b'{"input": [1, 2, 3]}\n'


class Cluster:
    """An API process and two workers on a fresh schema; ``count`` reads the store directly."""

    def __init__(self, workdir: Path, worker_concurrency: int) -> None:
        self.schema = f"inferd_sched_{uuid.uuid4().hex[:8]}"
        store = f"{PG_DSN}?schema={self.schema}"
        self.url = f"http://127.0.0.1:{free_port()}"
        self.procs = Processes(workdir)
        env = {"INFERD_API_KEYS": KEYS}
        models = str(ROOT / "examples/models")
        port = self.url.rsplit(":", 1)[1]
        self.procs.start(
            [
                *inferd_command(),
                "serve",
                "--models",
                models,
                "--port",
                port,
                "--store",
                store,
                "--no-worker",
                "--no-grpc",
            ],
            "serve.log",
            env,
        )
        for index in range(2):
            self.procs.start(
                [
                    *inferd_command(),
                    "worker",
                    "--models",
                    models,
                    "--store",
                    store,
                    "--concurrency",
                    str(worker_concurrency),
                ],
                f"worker-{index}.log",
                env,
            )
        wait_ready(self.url + "/readyz")
        time.sleep(2)  # workers load the models and connect
        self.db = psycopg.connect(PG_DSN, autocommit=True)

    def scalar(self, sql: str) -> Any:
        row = self.db.execute(sql.replace("jobs", f"{self.schema}.jobs", 1)).fetchone()
        return row[0] if row else None

    def stop(self) -> None:
        self.procs.stop()
        self.db.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")
        self.db.close()


async def post_bulk(client: httpx.AsyncClient, key: str, lines: int) -> int:
    response = await client.post(
        "/v1/models/echo/jobs/bulk", content=LINE * lines, headers={"Authorization": f"Bearer {key}"}
    )
    response.raise_for_status()
    return sum(1 for line in response.content.splitlines() if b'"id"' in line)


async def fairness(cluster: Cluster, backlog: int) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=cluster.url, timeout=120) as client:
        for start in range(0, backlog, 1000):
            await post_bulk(client, "ka", min(1000, backlog - start))
        submitted_b = time.time()
        assert await post_bulk(client, "kb", 10) == 10
    deadline = time.monotonic() + 120
    while cluster.scalar("SELECT count(*) FROM jobs WHERE tenant = 'B' AND status = 'succeeded'") < 10:
        if time.monotonic() > deadline:
            raise SystemExit("B's jobs did not finish within 120 s")
        await asyncio.sleep(0.02)
    span = cluster.scalar(
        "SELECT extract(epoch FROM max(finished_at) - min(created_at)) FROM jobs WHERE tenant = 'B'"
    )
    a_pending = cluster.scalar("SELECT count(*) FROM jobs WHERE tenant = 'A' AND status = 'pending'")
    result = {
        "backlog_A": backlog,
        "B_10_finished_within_s": round(float(span), 3),
        "B_wall_s": round(time.time() - submitted_b, 3),
        "A_still_pending": a_pending,
    }
    print(f"fairness: {result}", flush=True)
    return result


async def bulk(cluster: Cluster, duration: float, clients: int, lines: int, tenants: int) -> dict[str, Any]:
    accepted = 0
    async with httpx.AsyncClient(base_url=cluster.url, timeout=120) as client:
        started = time.monotonic()
        end = started + duration

        async def loop(key: str) -> int:
            count = 0
            while time.monotonic() < end:
                count += await post_bulk(client, key, lines)
            return count

        keys = ["ka", "kb"][:tenants]
        accepted = sum(await asyncio.gather(*(loop(keys[index % tenants]) for index in range(clients))))
        submit_s = time.monotonic() - started
    deadline = time.monotonic() + 600
    while cluster.scalar("SELECT count(*) FROM jobs WHERE status IN ('pending', 'running')") > 0:
        if time.monotonic() > deadline:
            raise SystemExit("jobs did not drain within 600 s")
        await asyncio.sleep(0.1)
    succeeded = cluster.scalar("SELECT count(*) FROM jobs WHERE status = 'succeeded'")
    span = cluster.scalar("SELECT extract(epoch FROM max(finished_at) - min(created_at)) FROM jobs")
    result = {
        "accepted": accepted,
        "succeeded": succeeded,
        "accepted_per_s": round(accepted / submit_s),
        "finished_per_s_end_to_end": round(succeeded / float(span)),
    }
    print(f"bulk: {result}", flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenario", choices=["all", "fairness", "bulk"], default="all")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--backlog", type=int, default=20_000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--lines", type=int, default=1000, help="jobs per bulk request")
    parser.add_argument(
        "--tenants",
        type=int,
        choices=[1, 2],
        default=1,
        help="bulk: the clients submit as A, or as A and B in turn",
    )
    parser.add_argument("--worker-concurrency", type=int, default=64)
    args = parser.parse_args()
    results: dict[str, Any] = {"args": vars(args)}
    with tempfile.TemporaryDirectory(prefix="inferd-jobs-sched-") as tmp:
        if args.scenario in ("all", "bulk"):
            results["pgbench"] = bench_pgbench(int(args.duration))
            print(f"pgbench -N: {results['pgbench']}", flush=True)
        for name in ("fairness", "bulk"):
            if args.scenario not in ("all", name):
                continue
            cluster = Cluster(Path(tmp), args.worker_concurrency)
            try:
                if name == "fairness":
                    results[name] = asyncio.run(fairness(cluster, args.backlog))
                else:
                    results[name] = asyncio.run(
                        bulk(cluster, args.duration, args.clients, args.lines, args.tenants)
                    )
            finally:
                cluster.stop()
    if "bulk" in results and "pgbench" in results:
        ratio = results["bulk"]["finished_per_s_end_to_end"] / results["pgbench"]["tps_4_clients"]
        results["bulk"]["finished_over_pgbench_4_clients"] = round(ratio, 2)
        print(f"bulk finished / pgbench -N (4 clients) = {ratio:.2f}")
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    path = out / f"jobs-sched-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"results written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
