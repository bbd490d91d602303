#!/usr/bin/env python3
"""HTTP benchmark: inferd against a bare FastAPI "floor", measured with wrk in one run.

    python bench/http_bench.py [--duration 15] [--connections 32] [--threads 2] [--skip-iris] [--rounds 1]

Starts bench/floor_app.py (uvicorn, one process, uvloop + httptools, no access log) and
`inferd serve --models examples/models --dev` on free local ports, then runs
`wrk --latency -s bench/post.lua` against

  * floor   POST /predict                          {"input": [1,2,3]}
  * echo    POST /v1/models/echo/predict           {"input": [1,2,3]}  (Authorization: Bearer dev)
  * iris    POST /v1/models/iris/versions/2/predict {"input": [5.1, 3.5, 1.4, 0.2]}  (unless --skip-iris)

and prints rps, p50/p99 latency, non-2xx count and the ratio to the floor's rps, writes the same to
bench/results/http-<timestamp>.json and prints the goal line "echo/floor = X (goal >= 0.6)".
With --rounds N the targets are run N times, interleaved, and medians are reported.
With --compare LABEL=CMD (repeatable) another server (e.g. an older checkout) is started beside inferd and
its echo/iris run in the same rounds as targets "echo@LABEL"/"iris@LABEL".

Exit status: 0 on success, 1 on a setup/run error (server did not start, warm-up request failed, wrk
failed), 2 if any wrk run saw non-2xx responses (the results are still written), 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from servers import HOST, BenchError, Server, free_port, inferd_command  # noqa: E402
from servers import REPO_ROOT as REPO_ROOT  # noqa: E402  (v2_bench.py imports it from here)

LUA_SCRIPT = BENCH_DIR / "post.lua"
RESULTS_DIR = BENCH_DIR / "results"

GOAL_ECHO_OVER_FLOOR = 0.6

ECHO_BODY = '{"input": [1,2,3]}'
IRIS_BODY = '{"input": [5.1, 3.5, 1.4, 0.2]}'
DEV_AUTH = "Bearer dev"


# --------------------------------------------------------------------------- wrk output parsing

# wrk prints times with the units us/ms/s, and s/m/h above one second.
_TIME_UNIT_TO_MS: dict[str, float] = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_RPS_RE = re.compile(r"^Requests/sec:\s+([0-9.]+)\s*$", re.MULTILINE)
_PERCENTILE_RE = re.compile(r"^\s*([0-9.]+)%\s+([0-9.]+)(us|ms|s|m|h)\s*$", re.MULTILINE)
_TOTAL_RE = re.compile(r"^\s*([0-9]+) requests in ([0-9.]+)(us|ms|s|m|h)", re.MULTILINE)
_WRK_NON2XX_RE = re.compile(r"Non-2xx or 3xx responses:\s+([0-9]+)")
_LUA_NON2XX_RE = re.compile(r"Lua non-2xx responses:\s+([0-9]+)")
_SOCKET_RE = re.compile(r"Socket errors: connect ([0-9]+), read ([0-9]+), write ([0-9]+), timeout ([0-9]+)")


@dataclass
class WrkStats:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int  # responses outside 200-299 (max of the Lua count and wrk's own >= 400 count)
    wrk_non_2xx_or_3xx: int  # wrk's "Non-2xx or 3xx responses" line (wrk counts status >= 400)
    lua_non_2xx: int | None  # from bench/post.lua, None if the line is missing
    socket_errors: dict[str, int] = field(default_factory=dict)


def to_ms(value: str, unit: str) -> float:
    return float(value) * _TIME_UNIT_TO_MS[unit]


def parse_wrk_output(text: str) -> WrkStats:
    """Parse `wrk --latency` output (plus the line printed by bench/post.lua)."""
    rps_m = _RPS_RE.search(text)
    if rps_m is None:
        raise BenchError(f"could not find 'Requests/sec' in wrk output:\n{text}")
    percentiles = {float(p): to_ms(v, u) for p, v, u in _PERCENTILE_RE.findall(text)}
    if 50.0 not in percentiles or 99.0 not in percentiles:
        raise BenchError(f"could not find the 50%/99% latency lines (was --latency passed?):\n{text}")
    total_m = _TOTAL_RE.search(text)
    wrk_non2xx_m = _WRK_NON2XX_RE.search(text)
    lua_m = _LUA_NON2XX_RE.search(text)
    socket_m = _SOCKET_RE.search(text)
    wrk_non2xx = int(wrk_non2xx_m.group(1)) if wrk_non2xx_m else 0
    lua_non2xx = int(lua_m.group(1)) if lua_m else None
    socket_errors = (
        dict(zip(("connect", "read", "write", "timeout"), map(int, socket_m.groups()), strict=True))
        if socket_m
        else {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    )
    return WrkStats(
        rps=float(rps_m.group(1)),
        p50_ms=percentiles[50.0],
        p99_ms=percentiles[99.0],
        requests=int(total_m.group(1)) if total_m else 0,
        non_2xx=max(wrk_non2xx, lua_non2xx or 0),
        wrk_non_2xx_or_3xx=wrk_non2xx,
        lua_non_2xx=lua_non2xx,
        socket_errors=socket_errors,
    )


# --------------------------------------------------------------------------- benchmark runs


@dataclass(frozen=True)
class Target:
    name: str
    server: Server
    path: str
    body: str
    auth: str | None = None

    @property
    def url(self) -> str:
        return self.server.base_url + self.path

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.auth:
            headers["Authorization"] = self.auth
        return headers


def warm_up(target: Target, count: int) -> None:
    """Send `count` requests; each must return 200, otherwise fail with the response body."""
    with httpx.Client(timeout=30.0) as client:
        for _ in range(max(count, 1)):
            try:
                resp = client.post(target.url, content=target.body.encode(), headers=target.headers())
            except httpx.HTTPError as exc:
                raise BenchError(f"warm-up request to {target.name} ({target.url}) failed: {exc}") from exc
            if resp.status_code != 200:
                raise BenchError(
                    f"warm-up request to {target.name} (POST {target.url}) returned HTTP "
                    f"{resp.status_code}, expected 200. Response body:\n{resp.text}"
                )


def run_wrk(
    target: Target,
    label: str,
    args: argparse.Namespace,
    *,
    count_status: bool = True,
    batch_scheduling: bool = False,
) -> tuple[WrkStats, str]:
    """One wrk run. ``count_status``: bench/post.lua counts every response outside 200-299 (a Lua call
    per response, which costs wrk CPU); without it only wrk's own count of status >= 400 is left.
    ``batch_scheduling``: wrk runs under Linux's SCHED_BATCH, so that its threads waking up on responses
    do not preempt a server process that shares its cores."""
    env = dict(os.environ)
    env.update(
        WRK_METHOD="POST",
        WRK_BODY=target.body,
        WRK_CONTENT_TYPE="application/json",
        WRK_AUTH=target.auth or "",
        WRK_HEADERS="",
        WRK_COUNT_STATUS="1" if count_status else "0",
    )
    cmd = [
        args.wrk,
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{args.duration}s",
        "--latency",
        "-s",
        str(LUA_SCRIPT),
        target.url,
    ]
    print(f"\n== {label}: {shlex.join(cmd)}", flush=True)
    try:
        proc = subprocess.run(
            cmd,
            env=env,
            capture_output=True,
            text=True,
            timeout=args.duration + 60,
            check=False,
            preexec_fn=_batch_scheduling if batch_scheduling else None,
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"wrk against {target.name} did not finish in time") from exc
    output = proc.stdout + (f"\n{proc.stderr}" if proc.stderr.strip() else "")
    print(output.rstrip(), flush=True)
    if proc.returncode != 0:
        raise BenchError(f"wrk against {target.name} exited with status {proc.returncode}")
    target.server.check_alive()
    return parse_wrk_output(proc.stdout), output


def _batch_scheduling() -> None:
    os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))


def summarize(targets: Sequence[Target], runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per target: medians over the rounds, sums of the error counts.

    ratio_to_floor is the median of the per-round ratios (each target against the floor run of the same
    round, seconds apart), which is more robust to drifting machine load than a ratio of medians.
    """
    rows: list[dict[str, Any]] = []
    for target in targets:
        mine = [r for r in runs if r["target"] == target.name]
        socket_errors: dict[str, int] = {}
        for r in mine:
            for kind, n in r["socket_errors"].items():
                socket_errors[kind] = socket_errors.get(kind, 0) + n
        rows.append(
            {
                "target": target.name,
                "method": "POST",
                "url": target.url,
                "body": target.body,
                "rounds": len(mine),
                "rps": statistics.median(r["rps"] for r in mine),
                "p50_ms": statistics.median(r["p50_ms"] for r in mine),
                "p99_ms": statistics.median(r["p99_ms"] for r in mine),
                "requests": sum(r["requests"] for r in mine),
                "non_2xx": sum(r["non_2xx"] for r in mine),
                "socket_errors": socket_errors,
                "ratio_to_floor": statistics.median(r["ratio_to_floor"] for r in mine),
            }
        )
    return rows


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    header = f"{'target':<14} {'rps':>10} {'p50 ms':>9} {'p99 ms':>9} {'non-2xx':>8} {'ratio':>7}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['target']:<14} {r['rps']:>10.1f} {r['p50_ms']:>9.2f} {r['p99_ms']:>9.2f} "
            f"{r['non_2xx']:>8d} {r['ratio_to_floor']:>7.2f}"
        )
    return "\n".join(lines)


def wrk_version(wrk: str) -> str:
    try:
        proc = subprocess.run([wrk, "--version"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    first = (proc.stdout or proc.stderr).strip().splitlines()
    return first[0] if first else "unknown"


# --------------------------------------------------------------------------- command line


def command_from_text(text: str, port: int, option: str) -> list[str]:
    if "{port}" not in text:
        raise BenchError(f"{option} must contain a {{port}} placeholder")
    cmd = [tok.replace("{port}", str(port)) for tok in shlex.split(text)]
    if cmd and cmd[0] in ("python", "python3"):
        cmd[0] = sys.executable  # same interpreter/venv as this script
    return cmd


def parse_compare(text: str) -> tuple[str, str]:
    label, sep, cmd = text.partition("=")
    if not sep or not label.strip() or not cmd.strip() or "@" in label:
        raise argparse.ArgumentTypeError("--compare takes LABEL=CMD (LABEL without '@', CMD with {port})")
    return label.strip(), cmd


def inferd_serve_command(args: argparse.Namespace, port: int) -> list[str]:
    if args.inferd_cmd:
        return command_from_text(args.inferd_cmd, port, "--inferd-cmd")
    return [
        *inferd_command(),
        "serve",
        "--models",
        "examples/models",
        "--dev",
        "--host",
        HOST,
        "--port",
        str(port),
    ]


def floor_command(port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "floor_app:app",
        "--app-dir",
        str(BENCH_DIR),
        "--host",
        HOST,
        "--port",
        str(port),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-access-log",
        "--log-level",
        "warning",
    ]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Benchmark inferd's HTTP path against a bare FastAPI floor with wrk.",
    )
    p.add_argument("--duration", type=int, default=15, help="seconds per wrk run (default 15)")
    p.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    p.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    p.add_argument("--skip-iris", action="store_true", help="skip the iris (sklearn) model run")
    p.add_argument(
        "--rounds", type=int, default=1, help="repeat all targets N times, report medians (default 1)"
    )
    p.add_argument(
        "--compare",
        type=parse_compare,
        action="append",
        default=[],
        metavar="LABEL=CMD",
        help="also serve echo/iris from CMD ({port} is replaced; e.g. an older checkout), interleaved in the "
        "same rounds as targets echo@LABEL and iris@LABEL; repeatable",
    )
    p.add_argument("--warmup-requests", type=int, default=5, help="requests before each run (default 5)")
    p.add_argument("--ready-timeout", type=float, default=60.0, help="seconds to wait for readiness")
    p.add_argument("--keep-logs", action="store_true", help="keep server logs even on success")
    p.add_argument("--wrk", default="wrk", help=argparse.SUPPRESS)
    # Hidden: point the "inferd" side at a stand-in, e.g. the floor app itself, to test the script:
    #   --inferd-cmd "python -m uvicorn bench.floor_app:app --port {port}" \
    #   --ready-path /openapi.json --echo-path /predict --skip-iris
    p.add_argument("--inferd-cmd", default=None, help=argparse.SUPPRESS)
    p.add_argument("--ready-path", default="/readyz", help=argparse.SUPPRESS)
    p.add_argument("--echo-path", default="/v1/models/echo/predict", help=argparse.SUPPRESS)
    p.add_argument("--iris-path", default="/v1/models/iris/versions/2/predict", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.duration < 1 or args.rounds < 1 or args.threads < 1 or args.connections < args.threads:
        p.error("need --duration >= 1, --rounds >= 1, --threads >= 1 and --connections >= --threads")
    return args


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run(args: argparse.Namespace, workdir: Path) -> int:
    started = time.strftime("%Y%m%d-%H%M%S")
    started_iso = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    if shutil.which(args.wrk) is None:
        raise BenchError(f"`{args.wrk}` not found on PATH (Debian/Ubuntu: apt-get install wrk)")
    ports: set[int] = set()
    while len(ports) < 2 + len(args.compare):
        ports.add(free_port())
    floor_port, inferd_port, *compare_ports = ports

    floor = Server("floor", floor_command(floor_port), floor_port, workdir / "floor.log")

    def inferd_like(name: str, cmd: list[str], port: int) -> Server:
        env = dict(os.environ)
        env["INFERD_ACCESS_LOG"] = str(workdir / f"{name}-access.log")
        # gRPC is served too, on a port of its own per server (two cannot share the default one).
        env["INFERD_GRPC_PORT"] = str(free_port())
        return Server(name, cmd, port, workdir / f"{name}.log", env)

    inferd = inferd_like("inferd", inferd_serve_command(args, inferd_port), inferd_port)
    compared = [
        inferd_like(label, command_from_text(cmd, port, "--compare"), port)
        for (label, cmd), port in zip(args.compare, compare_ports, strict=True)
    ]

    with contextlib.ExitStack() as servers:
        for server in (floor, inferd, *compared):
            servers.callback(server.stop)
            server.start()
        floor.wait_ready("/openapi.json", args.ready_timeout)
        for server in (inferd, *compared):
            server.wait_ready(args.ready_path, args.ready_timeout)

        targets = [Target("floor", floor, "/predict", ECHO_BODY)]
        for server in (inferd, *compared):
            suffix = "" if server is inferd else f"@{server.name}"
            targets.append(Target(f"echo{suffix}", server, args.echo_path, ECHO_BODY, DEV_AUTH))
            if not args.skip_iris:
                targets.append(Target(f"iris{suffix}", server, args.iris_path, IRIS_BODY, DEV_AUTH))

        # Check every target answers 200 before spending time on any wrk run, then warm up again
        # right before each run.
        for target in targets:
            warm_up(target, 1)

        # Rounds interleave the targets (floor, echo, iris, floor, ...) so slow drifts in machine load
        # hit all of them alike.
        runs: list[dict[str, Any]] = []
        for round_no in range(1, args.rounds + 1):
            floor_rps = 0.0
            for target in targets:
                warm_up(target, args.warmup_requests)
                label = target.name if args.rounds == 1 else f"{target.name} (round {round_no}/{args.rounds})"
                stats, raw = run_wrk(target, label, args)
                if target.name == "floor":
                    floor_rps = stats.rps
                runs.append(
                    {
                        "round": round_no,
                        "target": target.name,
                        **asdict(stats),
                        "ratio_to_floor": stats.rps / floor_rps if floor_rps else 0.0,
                        "wrk_output": raw,
                    }
                )

    rows = summarize(targets, runs)
    echo_ratio = next(r["ratio_to_floor"] for r in rows if r["target"] == "echo")
    report = {
        "timestamp": started_iso,
        "config": {
            "duration_s": args.duration,
            "connections": args.connections,
            "threads": args.threads,
            "rounds": args.rounds,
            "floor_cmd": floor.cmd,
            "inferd_cmd": inferd.cmd,
            "compare_cmds": {server.name: server.cmd for server in compared},
            "wrk": wrk_version(args.wrk),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
        },
        "results": rows,
        "runs": runs,
        "goal": {
            "metric": "echo/floor",
            "value": echo_ratio,
            "goal": GOAL_ECHO_OVER_FLOOR,
            "met": echo_ratio >= GOAL_ECHO_OVER_FLOOR,
        },
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out_path = RESULTS_DIR / f"http-{started}.json"
    out_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")

    print()
    print(format_table(rows))
    print(f"\nresults written to {out_path}")
    if args.rounds > 1:
        per_round = ", ".join(f"{r['ratio_to_floor']:.2f}" for r in runs if r["target"] == "echo")
        print(f"echo/floor per round: {per_round} (the line below is their median)")
    for server in compared:
        for kind in ("echo", "iris"):
            mine = {r["round"]: r["rps"] for r in runs if r["target"] == kind}
            theirs = {r["round"]: r["rps"] for r in runs if r["target"] == f"{kind}@{server.name}"}
            ratios = [mine[n] / theirs[n] for n in sorted(mine) if theirs.get(n)]
            if ratios:
                print(
                    f"{kind}/{kind}@{server.name} = {statistics.median(ratios):.3f} "
                    f"(per round: {', '.join(f'{x:.3f}' for x in ratios)})"
                )
    print(f"echo/floor = {echo_ratio:.2f} (goal >= {GOAL_ECHO_OVER_FLOOR})")

    status = 0
    for r in rows:
        if r["non_2xx"]:
            print(f"WARNING: {r['target']}: {r['non_2xx']} non-2xx responses; its numbers are not valid")
            status = 2
        if any(r["socket_errors"].values()):
            print(f"WARNING: {r['target']}: socket errors {r['socket_errors']}")
    return status


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # Ctrl-C (even if SIGINT was inherited as ignored) and SIGTERM both unwind through the
    # try/finally blocks that stop the servers.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="inferd-bench-"))
    ok = False
    try:
        status = run(args, workdir)
        ok = True
        return status
    except BenchError as exc:
        print(f"\nERROR: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        if (ok and not args.keep_logs) or not any(workdir.iterdir()):
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"server logs kept in {workdir}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
