"""Store outage under job load: PostgreSQL stopped for a while and restarted while clients submit jobs.

    python bench/fault_bench.py [--outage 10] [--before 3] [--after 5] [--clients 8]

One ``inferd serve --no-worker`` API process and one ``inferd worker`` process on a private PostgreSQL
cluster (initdb'd in a temporary directory on a free port; never the machine's shared server). Clients
submit ``POST /v1/models/echo/jobs`` back to back; after ``--before`` seconds the server is stopped
(``pg_ctl stop -m fast``) for ``--outage`` seconds, then started again; load goes on for ``--after``
seconds. Reported, with goals:

- accepted jobs lost: answered 202 but missing from the store, or not succeeded once the queue
  drained (goal 0);
- client-visible 500s: any 5xx other than 503, plus connection errors (goal 0);
- slowest 503 during the outage (goal <= 2 s: the store's answer budget);
- recovery after the database answers again: the first accepted submission, /readyz 200, and the
  first job the worker process starts (goal <= 2 s each).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "integration" / "jobs"))

from private_pg import PrivatePostgres, unavailable_reason  # noqa: E402
from servers import Processes, free_port, inferd_command, wait_ready  # noqa: E402

HEADERS = {"Authorization": "Bearer dev"}


@dataclass
class Sample:
    sent: float
    done: float
    status: int  # 0: no HTTP answer
    code: str = ""
    job_id: str = ""


@dataclass
class Load:
    samples: list[Sample] = field(default_factory=list)
    ready: list[tuple[float, int]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)


async def _client(url: str, load: Load, index: int) -> None:
    async with httpx.AsyncClient(base_url=url, headers=HEADERS, timeout=30) as client:
        n = 0
        while not load.stop.is_set():
            n += 1
            sent = time.monotonic()
            try:
                response = await client.post("/v1/models/echo/jobs", json={"input": [index, n]})
            except httpx.HTTPError:
                load.samples.append(Sample(sent, time.monotonic(), 0))
                await asyncio.sleep(0.05)
                continue
            done = time.monotonic()
            body = (
                response.json()
                if response.headers.get("content-type", "").startswith("application/json")
                else {}
            )
            if response.status_code == 202:
                load.samples.append(Sample(sent, done, 202, job_id=body["id"]))
            else:
                code = body.get("error", {}).get("code", "") if isinstance(body, dict) else ""
                load.samples.append(Sample(sent, done, response.status_code, code))
                await asyncio.sleep(0.05)  # as a client honouring Retry-After loosely would


async def _readiness(url: str, load: Load) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        while not load.stop.is_set():
            try:
                status = (await client.get("/readyz")).status_code
            except httpx.HTTPError:
                status = 0
            load.ready.append((time.monotonic(), status))
            await asyncio.sleep(0.05)


def _run_load(url: str, load: Load, clients: int) -> None:
    async def main() -> None:
        await asyncio.gather(_readiness(url, load), *(_client(url, load, i) for i in range(clients)))

    asyncio.run(main())


def _wait_for_line(log: Path, text: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if log.exists() and text in log.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise SystemExit(f"{log.name} did not say {text!r} within {timeout_s}s")


def _first_after(times: list[float], since: float) -> float | None:
    later = [t for t in times if t >= since]
    return min(later) - since if later else None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--outage", type=float, default=10.0)
    parser.add_argument("--before", type=float, default=3.0)
    parser.add_argument("--after", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    reason = unavailable_reason()
    if reason is not None:
        raise SystemExit(f"cannot make a private PostgreSQL: {reason}")

    import psycopg

    pg = PrivatePostgres()
    results: dict[str, Any] = {"outage_s": args.outage, "clients": args.clients}
    with tempfile.TemporaryDirectory(prefix="inferd-fault-bench-") as tmp:
        workdir = Path(tmp)
        results["logs"] = str(workdir)
        procs = Processes(workdir)
        try:
            pg.start()
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            models = str(ROOT / "examples/models")
            procs.start(
                [
                    *inferd_command(),
                    "serve",
                    "--models",
                    models,
                    "--dev",
                    "--port",
                    str(port),
                    "--store",
                    pg.url,
                    "--no-worker",
                    "--no-grpc",
                ],
                "serve.log",
            )
            wait_ready(url + "/readyz")
            procs.start([*inferd_command(), "worker", "--models", models, "--store", pg.url], "worker.log")
            _wait_for_line(workdir / "worker.log", "running")  # models loaded, store open, claiming

            load = Load()
            loader = threading.Thread(target=_run_load, args=(url, load, args.clients))
            loader.start()
            time.sleep(args.before)
            stopping = time.monotonic()
            pg.stop()
            stopped = time.monotonic()
            time.sleep(args.outage)
            pg.start()  # returns once the server accepts connections
            restarted, restarted_wall = time.monotonic(), datetime.now(UTC)
            time.sleep(args.after)
            load.stop.set()
            loader.join()

            accepted = {s.job_id for s in load.samples if s.status == 202}
            with psycopg.connect(pg.url, autocommit=True) as conn:
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    row = conn.execute(
                        "SELECT count(*) FROM jobs WHERE status IN ('pending', 'running')"
                    ).fetchone()
                    if row is not None and row[0] == 0:
                        break
                    time.sleep(0.2)
                rows = conn.execute("SELECT id, status, started_at FROM jobs").fetchall()
        finally:
            procs.stop()
            pg.close()
            for log in sorted(workdir.glob("*.log")):
                tail = log.read_text(errors="replace").splitlines()[-15:]
                results[f"log_{log.stem}"] = tail

    stored = {job_id: status for job_id, status, _ in rows}
    failures = [s for s in load.samples if s.status == 0 or (s.status >= 500 and s.status != 503)]
    unavailable = [s for s in load.samples if s.status == 503]
    started_after = [started for _, _, started in rows if started is not None and started >= restarted_wall]
    results.update(
        {
            "requests": len(load.samples),
            "accepted": len(accepted),
            "lost_missing": sum(1 for job_id in accepted if job_id not in stored),
            "lost_not_succeeded": sum(
                1 for job_id in accepted if stored.get(job_id, "succeeded") != "succeeded"
            ),
            "client_visible_500s": len(failures),
            "failure_statuses": sorted({f"{s.status} {s.code}" for s in failures}),
            "answered_503": len(unavailable),
            "codes_503": sorted({s.code for s in unavailable}),
            "slowest_503_s": max((s.done - s.sent for s in unavailable), default=0.0),
            "slowest_503_sent_after_stop_began_s": max(unavailable, key=lambda s: s.done - s.sent).sent
            - stopping
            if unavailable
            else None,
            "stop_took_s": stopped - stopping,
            "slowest_answer_during_outage_s": max(
                (s.done - s.sent for s in load.samples if stopping <= s.sent < restarted), default=0.0
            ),
            "recovery_api_s": _first_after([s.done for s in load.samples if s.status == 202], restarted),
            "recovery_readyz_s": _first_after([t for t, status in load.ready if status == 200], restarted),
            "recovery_worker_s": (
                (min(started_after) - restarted_wall).total_seconds() if started_after else None
            ),
        }
    )
    lost = results["lost_missing"] + results["lost_not_succeeded"]
    print(
        f"requests {results['requests']}, accepted {results['accepted']}, 503 {results['answered_503']} {results['codes_503']}"
    )
    print(f"accepted jobs lost    : {lost}  goal 0")
    print(f"client-visible 500s   : {results['client_visible_500s']} {results['failure_statuses']}  goal 0")
    print(f"slowest 503           : {results['slowest_503_s']:.2f} s  goal <= 2")
    for what in ("api", "readyz", "worker"):
        value = results[f"recovery_{what}_s"]
        shown = "never" if value is None else f"{value:.2f} s"
        print(f"recovery ({what:6})     : {shown}  goal <= 2")
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(exist_ok=True)
    out_file = out_dir / f"fault-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out_file.write_text(json.dumps(results, indent=2))
    print(f"results: {out_file}")


if __name__ == "__main__":
    main()
