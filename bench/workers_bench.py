#!/usr/bin/env python3
"""``inferd serve --workers N`` against one process, on echo and iris, in one run (see README.md).

Variants (each its own server, started one after the other on a free port):

- ``1``: ``inferd serve`` as it ships (one process, in-memory metrics);
- ``1+mmap``: the same single process with prometheus_client's multiprocess value class
  (``PROMETHEUS_MULTIPROC_DIR`` set), i.e. the per-request cost of multiprocess metrics alone;
- ``1+limit`` / ``1+redis`` (with ``--redis URL``): a rate limit no request reaches, checked in the
  process / shared through Redis: the per-request cost of a Redis-shared limit;
- ``N``: ``inferd serve --workers N`` for each N of ``--workers`` (default 2);
- with ``--compare-source DIR``, each of the above again as ``NAME@base``, run from that source tree
  (e.g. an export of main), in the same rounds: before/after in one run.

Every run is preceded by ``--warmup`` seconds of the same wrk load, unmeasured, so that each process
has served its share of connections before the measured run.

wrk shares the machine's cores with the server, so besides requests/s the script reports the CPU
seconds each side used during the run (the server's whole process tree, and wrk), and rps per server
CPU second. What wrk spends is taken from the server: wrk runs without bench/post.lua's per-response
status callback (a Lua call and a header table per response), and errors are wrk's own count of
responses with status >= 400, which every error inferd answers is. ``--lua-status`` puts the callback
back (the setup of the runs before it was dropped). ``--wrk-batch`` runs wrk under SCHED_BATCH: its threads,
which wake up on every few responses, then no longer preempt the servers' event loops (the server processes
of ``--workers N`` already run under SCHED_BATCH, so they never preempted wrk).

Exit status: 0; 1 when a server did not start or wrk failed; 2 when a run got error responses (its
numbers are not valid; the results are still written).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent))

from http_bench import DEV_AUTH, ECHO_BODY, IRIS_BODY, RESULTS_DIR, Target, run_wrk, warm_up  # noqa: E402
from servers import HOST, BenchError, Server, free_port, inferd_command  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def tree_pids(root: int) -> list[int]:
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as handle:
                    todo.extend(int(child) for child in handle.read().split())
    return pids


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    used = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            used[pid] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return used


def executor_steps(target: Target, model: str) -> tuple[float, float]:
    """(steps, items) the server's executors ran for ``model`` so far (``inference_batch_items``, merged
    over every process by whichever answers)."""
    text = httpx.get(target.server.base_url + "/metrics", timeout=10.0).text
    totals = {"inference_batch_items_count": 0.0, "inference_batch_items_sum": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in totals and sample.labels.get("model") == model:
                totals[sample.name] += sample.value
    return totals["inference_batch_items_count"], totals["inference_batch_items_sum"]


def measured_run(target: Target, label: str, args: argparse.Namespace, root: int) -> dict[str, Any]:
    steps_before = executor_steps(target, target.name)
    pids = tree_pids(root)
    before = cpu_seconds(pids)
    wrk_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    stats, _ = run_wrk(target, label, args, count_status=args.lua_status, batch_scheduling=args.wrk_batch)
    wrk_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    after = cpu_seconds(pids)
    server_cpu = sum(after[pid] - before.get(pid, 0.0) for pid in after)
    steps_after = executor_steps(target, target.name)
    steps, items = (later - earlier for later, earlier in zip(steps_after, steps_before, strict=True))
    wrk_cpu = (wrk_after.ru_utime + wrk_after.ru_stime) - (wrk_before.ru_utime + wrk_before.ru_stime)
    return {
        "rps": stats.rps,
        "p50_ms": stats.p50_ms,
        "p99_ms": stats.p99_ms,
        "non_2xx": stats.non_2xx,
        "server_cpu_s": server_cpu,
        "wrk_cpu_s": wrk_cpu,
        "rps_per_server_cpu_s": stats.rps * args.duration / server_cpu if server_cpu else 0.0,
        "server_cpu_us_per_request": 1e6 * server_cpu / (stats.rps * args.duration) if stats.rps else 0.0,
        "wrk_cpu_us_per_request": 1e6 * wrk_cpu / (stats.rps * args.duration) if stats.rps else 0.0,
        "items_per_step": items / steps if steps else 0.0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[2])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--skip-iris", action="store_true")
    parser.add_argument("--skip-mmap", action="store_true", help="skip the 1+mmap variant")
    parser.add_argument(
        "--redis",
        default=None,
        metavar="URL",
        help="also run 1+limit (a rate limit no request reaches, checked in process) and 1+redis (the same "
        "limit shared through Redis at URL)",
    )
    parser.add_argument(
        "--warmup", type=int, default=2, help="seconds of unmeasured wrk load before each measured run"
    )
    parser.add_argument(
        "--compare-source",
        type=Path,
        metavar="DIR",
        help="also run every variant from this source tree (its src first on PYTHONPATH) as NAME@base",
    )
    parser.add_argument(
        "--lua-status",
        action="store_true",
        help="count non-2xx responses in bench/post.lua's per-response callback too (costs wrk CPU)",
    )
    parser.add_argument(
        "--wrk-batch",
        action="store_true",
        help="run wrk under SCHED_BATCH, as the server processes of --workers N run: then neither side's "
        "threads preempt the other's when they wake up (wrk's otherwise preempt the event loops)",
    )
    parser.add_argument("--wrk", default="wrk")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="inferd-workers-bench-"))
    variants: list[tuple[str, list[str], dict[str, str]]] = [("1", [], {})]
    if not args.skip_mmap:
        mmap_dir = workdir / "mmap"
        mmap_dir.mkdir()
        variants.append(("1+mmap", [], {"PROMETHEUS_MULTIPROC_DIR": str(mmap_dir)}))
    if args.redis:
        limit = {"INFERD_RATE_LIMIT": "10000000/s"}
        variants.append(("1+limit", [], limit))
        variants.append(("1+redis", [], {**limit, "INFERD_REDIS_URL": args.redis}))
    variants += [(str(n), ["--workers", str(n)], {}) for n in args.workers]
    if args.compare_source is not None:
        base_path = os.pathsep.join(
            filter(None, [str(args.compare_source.resolve() / "src"), os.environ.get("PYTHONPATH")])
        )
        variants += [
            (f"{name}@base", extra, {**env, "PYTHONPATH": base_path}) for name, extra, env in variants
        ]
    models = [("echo", "/v1/models/echo/predict", ECHO_BODY)]
    if not args.skip_iris:
        models.append(("iris", "/v1/models/iris/versions/2/predict", IRIS_BODY))

    results: list[dict[str, Any]] = []
    try:
        for round_no in range(1, args.rounds + 1):
            for name, extra, env_extra in variants:
                port = free_port()
                env = {
                    **os.environ,
                    "INFERD_ACCESS_LOG": str(workdir / f"access-{name}.log"),
                    "INFERD_STORE": f"sqlite:///{workdir / f'jobs-{name}.db'}",
                    **env_extra,
                }
                env.pop("INFERD_WORKERS", None)
                command = [*inferd_command(), "serve", "--models", "examples/models", "--dev", "--host", HOST]
                server = Server(
                    f"inferd[{name}]",
                    [*command, "--port", str(port), *extra],
                    port,
                    workdir / f"inferd-{name}.log",
                    env,
                )
                server.start()
                try:
                    server.wait_ready("/readyz", 90)
                    assert server.proc is not None
                    for model, path, body in models:
                        target = Target(model, server, path, body, DEV_AUTH)
                        warm_up(target, 20)
                        if args.warmup > 0:
                            run_wrk(
                                target,
                                f"warm-up {model} on {name}",
                                argparse.Namespace(**{**vars(args), "duration": args.warmup}),
                                count_status=args.lua_status,
                                batch_scheduling=args.wrk_batch,
                            )
                        row = measured_run(
                            target, f"{model} on {name} (round {round_no})", args, server.proc.pid
                        )
                        results.append({"round": round_no, "variant": name, "model": model, **row})
                finally:
                    server.stop()
    except BenchError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1

    print(
        f"\n{'variant':>8} {'model':>5} {'rps':>8} {'x 1':>6} {'p50':>7} {'p99':>7} {'srv cpu':>8} {'wrk cpu':>8} "
        f"{'us/req':>6} {'wrk us':>6} {'items':>5}  per-round x 1"
    )
    summary = []
    for name, _, _ in variants:
        for model, _, _ in models:
            rows = [r for r in results if r["variant"] == name and r["model"] == model]
            one = "1@base" if name.endswith("@base") else "1"
            base = [r for r in results if r["variant"] == one and r["model"] == model]
            ratios = [r["rps"] / b["rps"] for r, b in zip(rows, base, strict=True)]

            def median(key: str, rows: list[dict[str, Any]] = rows) -> float:
                return statistics.median(float(r[key]) for r in rows)

            entry = {
                "variant": name,
                "model": model,
                "rps": median("rps"),
                # Of the per-round ratios (each against the one process of the same round); with an
                # even number of rounds the mean of the middle two, not the higher one.
                "ratio_to_1": statistics.median(ratios),
                "round_ratios": [round(ratio, 2) for ratio in ratios],
                "p50_ms": median("p50_ms"),
                "p99_ms": median("p99_ms"),
                "server_cpu_s": median("server_cpu_s"),
                "wrk_cpu_s": median("wrk_cpu_s"),
                "non_2xx": sum(r["non_2xx"] for r in rows),
                # Server CPU per request: what a process spends on each, whatever share of the cores wrk took.
                "server_cpu_us_per_request": median("server_cpu_us_per_request"),
                "wrk_cpu_us_per_request": median("wrk_cpu_us_per_request"),
                "items_per_step": median("items_per_step"),
            }
            summary.append(entry)
            print(
                f"{name:>8} {model:>5} {entry['rps']:>8.0f} {entry['ratio_to_1']:>6.2f} {entry['p50_ms']:>7.2f} "
                f"{entry['p99_ms']:>7.2f} {entry['server_cpu_s']:>8.1f} {entry['wrk_cpu_s']:>8.1f} "
                f"{entry['server_cpu_us_per_request']:>6.0f} {entry['wrk_cpu_us_per_request']:>6.0f} "
                f"{entry['items_per_step']:>5.1f}  {entry['round_ratios']}"
            )
    compared = []
    if args.compare_source is not None:
        print(
            "\nthis tree against the compared one (median of the per-round rps ratios; server CPU per request)"
        )
        for name, _, _ in variants:
            if name.endswith("@base"):
                continue
            for model, _, _ in models:
                mine = [r for r in results if r["variant"] == name and r["model"] == model]
                theirs = [r for r in results if r["variant"] == f"{name}@base" and r["model"] == model]
                ratios = [a["rps"] / b["rps"] for a, b in zip(mine, theirs, strict=True)]
                cpu = [
                    statistics.median(r["server_cpu_us_per_request"] for r in rows) for rows in (mine, theirs)
                ]
                compared.append(
                    {
                        "variant": name,
                        "model": model,
                        "ratio": statistics.median(ratios),
                        "round_ratios": [round(r, 2) for r in ratios],
                        "us_per_request": cpu,
                    }
                )
                print(
                    f"{name:>8} {model:>5} {statistics.median(ratios):6.2f} x  {cpu[0]:4.0f} vs {cpu[1]:4.0f} us/req  {[round(r, 2) for r in ratios]}"
                )
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"workers-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(
        json.dumps(
            {
                "config": {**vars(args), "compare_source": str(args.compare_source)},
                "summary": summary,
                "compared": compared,
                "runs": results,
            },
            indent=2,
        )
        + "\n"
    )
    print(
        f"\nresults written to {out} (CPU in seconds over the {args.duration}s run; cores: {os.cpu_count()})"
    )
    status = 0
    for entry in summary:
        if entry["non_2xx"]:
            print(
                f"WARNING: {entry['variant']} {entry['model']}: {entry['non_2xx']} error responses (status >= 400); "
                "its numbers are not valid"
            )
            status = 2
    return status


if __name__ == "__main__":
    sys.exit(main())
