"""End-to-end job throughput: submit → succeeded, on SQLite and on PostgreSQL, against pgbench.

    python bench/jobs_bench.py [--duration 10] [--connections 16] [--worker-concurrency 64] [--skip-postgres]

- reference: ``pgbench -N`` (simple-update) transactions/s on the same PostgreSQL, 1 and 4 clients;
- sqlite: one ``inferd serve`` process (API + in-process worker) on a fresh SQLite file;
- postgres: one ``inferd serve --no-worker`` API process and two ``inferd worker`` processes.

wrk submits ``POST /v1/models/echo/jobs`` for ``--duration`` seconds; the run ends when every accepted job
has succeeded. jobs/s = succeeded jobs / (last success − first submission). Numbers on a noisy 2-core
machine compare only within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PG_DSN = os.environ.get("INFERD_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
BODY = '{"input": [1, 2, 3]}'

sys.path.insert(0, str(ROOT / "bench"))

from servers import Processes, free_port, inferd_command, wait_ready  # noqa: E402


def run_wrk(url: str, duration: int, connections: int) -> dict[str, Any]:
    env = {**os.environ, "WRK_BODY": BODY, "WRK_AUTH": "Bearer dev"}
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "-s", str(ROOT / "bench" / "post.lua"), url]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    rejected = int(non2xx.group(1)) if non2xx else 0
    return {
        "submitted": total - rejected,
        "rejected": rejected,
        "submit_rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
    }  # type: ignore[union-attr]


def wait_drained(count_succeeded: Any, count_open: Any, expected: int, timeout_s: float = 300) -> float:
    """Returns the time when the last job succeeded (or raises)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if count_open() == 0:
            done = count_succeeded()
            if done < expected:
                raise SystemExit(f"only {done} of {expected} jobs succeeded")
            return time.monotonic()
        time.sleep(0.05)
    raise SystemExit("jobs did not drain in time")


def bench_sqlite(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    db = workdir / "bench.db"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    procs = Processes(workdir)
    try:
        procs.start(
            [
                *inferd_command(),
                "serve",
                "--models",
                str(ROOT / "examples/models"),
                "--dev",
                "--no-grpc",
                "--port",
                str(port),
                "--store",
                f"sqlite:///{db}",
            ],
            "sqlite-serve.log",
            {"INFERD_WORKER_CONCURRENCY": str(args.worker_concurrency)},
        )
        wait_ready(url + "/readyz")
        conn = sqlite3.connect(db, timeout=30)

        def count(status_sql: str) -> int:
            return int(conn.execute(f"SELECT count(*) FROM jobs WHERE {status_sql}").fetchone()[0])

        started = time.monotonic()
        wrk = run_wrk(f"{url}/v1/models/echo/jobs", args.duration, args.connections)
        ended = wait_drained(
            lambda: count("status = 'succeeded'"),
            lambda: count("status IN ('pending', 'running')"),
            wrk["submitted"],
        )
        conn.close()
    finally:
        procs.stop()
    return {**wrk, "seconds": ended - started, "jobs_per_s": wrk["submitted"] / (ended - started)}


def bench_postgres(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    import psycopg

    schema = f"inferd_bench_{uuid.uuid4().hex[:8]}"
    store = f"{PG_DSN}?schema={schema}"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    procs = Processes(workdir)
    try:
        subprocess.run([*inferd_command(), "migrate", "--store", store], check=True, capture_output=True)
        procs.start(
            [
                *inferd_command(),
                "serve",
                "--models",
                str(ROOT / "examples/models"),
                "--dev",
                "--no-grpc",
                "--port",
                str(port),
                "--store",
                store,
                "--no-worker",
            ],
            "pg-serve.log",
        )
        for index in range(2):
            procs.start(
                [
                    *inferd_command(),
                    "worker",
                    "--models",
                    str(ROOT / "examples/models"),
                    "--store",
                    store,
                    "--concurrency",
                    str(args.worker_concurrency),
                ],
                f"pg-worker-{index}.log",
            )
        wait_ready(url + "/readyz")
        time.sleep(2)  # workers load models and connect
        with psycopg.connect(PG_DSN, autocommit=True) as conn:

            def count(status_sql: str) -> int:
                row = conn.execute(f"SELECT count(*) FROM {schema}.jobs WHERE {status_sql}").fetchone()
                return int(row[0]) if row else 0

            started = time.monotonic()
            wrk = run_wrk(f"{url}/v1/models/echo/jobs", args.duration, args.connections)
            ended = wait_drained(
                lambda: count("status = 'succeeded'"),
                lambda: count("status IN ('pending', 'running')"),
                wrk["submitted"],
            )
    finally:
        procs.stop()
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    return {**wrk, "seconds": ended - started, "jobs_per_s": wrk["submitted"] / (ended - started)}


def bench_pgbench(duration: int) -> dict[str, float]:
    database = "inferd_pgbench"
    base = ["-h", "127.0.0.1", "-U", "postgres"]
    subprocess.run(
        ["psql", *base, "-d", "postgres", "-qc", f"DROP DATABASE IF EXISTS {database}"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        ["psql", *base, "-d", "postgres", "-qc", f"CREATE DATABASE {database}"],
        check=True,
        capture_output=True,
    )
    try:
        subprocess.run(["pgbench", *base, "-i", "-s", "1", "-q", database], check=True, capture_output=True)
        results = {}
        for clients in (1, 4):
            out = subprocess.run(
                [
                    "pgbench",
                    *base,
                    "-N",
                    "-c",
                    str(clients),
                    "-j",
                    str(min(clients, 2)),
                    "-T",
                    str(duration),
                    database,
                ],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            results[f"tps_{clients}_clients"] = float(re.search(r"tps = ([\d.]+)", out).group(1))  # type: ignore[union-attr]
        return results
    finally:
        subprocess.run(
            ["psql", *base, "-d", "postgres", "-qc", f"DROP DATABASE IF EXISTS {database}"],
            capture_output=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--worker-concurrency", type=int, default=64)
    parser.add_argument("--skip-postgres", action="store_true")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (Debian package wrk)")
    results: dict[str, Any] = {"duration_s": args.duration, "connections": args.connections}
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="inferd-jobs-bench-")))
        results["sqlite"] = bench_sqlite(args, workdir)
        print(
            f"sqlite   : {results['sqlite']['jobs_per_s']:8.0f} jobs/s end to end "
            f"({results['sqlite']['submitted']} jobs, submit {results['sqlite']['submit_rps']:.0f}/s)  goal >= 500"
        )
        if not args.skip_postgres:
            results["pgbench"] = bench_pgbench(args.duration)
            results["postgres"] = bench_postgres(args, workdir)
            pg = results["postgres"]
            ratio = pg["jobs_per_s"] / results["pgbench"]["tps_4_clients"]
            results["postgres"]["ratio_to_pgbench_4_clients"] = ratio
            print(
                f"pgbench -N: {results['pgbench']['tps_1_clients']:8.0f} tps (1 client), "
                f"{results['pgbench']['tps_4_clients']:.0f} tps (4 clients)"
            )
            print(
                f"postgres : {pg['jobs_per_s']:8.0f} jobs/s end to end ({pg['submitted']} jobs, submit "
                f"{pg['submit_rps']:.0f}/s)  = {ratio:.2f} x pgbench(4 clients)  goal >= 1000"
            )
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(exist_ok=True)
    out_file = out_dir / f"jobs-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out_file.write_text(json.dumps(results, indent=2))
    print(f"results: {out_file}")


if __name__ == "__main__":
    main()
