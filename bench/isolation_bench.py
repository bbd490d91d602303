#!/usr/bin/env python3
"""``isolation: process`` against ``isolation: thread``, in one run (see README.md).

Two servers, one after the other, on copies of examples/models (iris version 2, echo, slow) that differ
only in ``isolation``; ``--devices cpu=4`` as by default. For each:

- iris: wrk on ``POST /v1/models/iris/versions/2/predict`` (as http_bench.py);
- tensor: wrk (4 connections) on ``POST /v2/models/echo/infer`` with a 1 MiB FP32 tensor in the binary
  tensor extension (the 1 MiB goes to the model and back);
- slow: 6 concurrent clients send 9 requests each to the slow model (``timeout_s: 1``, deadline
  admission off): every third sleeps 5 s (stuck), the others 0.2 s; the status of every request is counted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from http_bench import DEV_AUTH, IRIS_BODY, LUA_SCRIPT, RESULTS_DIR, parse_wrk_output  # noqa: E402
from servers import HOST, REPO_ROOT, BenchError, Server, free_port, inferd_command  # noqa: E402

TENSOR_ELEMENTS = 256 * 1024  # 1 MiB of FP32


def repository(root: Path, isolation: str) -> Path:
    models = REPO_ROOT / "examples" / "models"
    for name, version in (("iris", "2"), ("echo", "1"), ("slow", "1")):
        target = root / name / version
        shutil.copytree(models / name / version, target)
        spec = target / "model.yaml"
        extra = f"\nisolation: {isolation}\n"
        if name == "slow":
            # Queue and time out instead of being refused on arrival: what is measured is what a stuck
            # call does to the calls behind it (with admission on, both modes refuse nearly everything
            # once the call estimate passes the 1 s deadline).
            extra += "deadline_admission: false\n"
        spec.write_text(spec.read_text() + extra)
    return root


def tensor_body(workdir: Path) -> tuple[Path, int]:
    values = np.random.default_rng(7).random(TENSOR_ELEMENTS, dtype=np.float32)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [1, TENSOR_ELEMENTS],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": values.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    path = workdir / "tensor.bin"
    path.write_bytes(header + values.astype("<f4").tobytes())
    return path, len(header)


def wrk(
    url: str,
    args: argparse.Namespace,
    *,
    connections: int,
    body: str = "",
    body_file: Path | None = None,
    headers: str = "",
    content_type: str = "application/json",
) -> dict[str, Any]:
    env = {
        **os.environ,
        "WRK_METHOD": "POST",
        "WRK_BODY": body,
        "WRK_CONTENT_TYPE": content_type,
        "WRK_AUTH": DEV_AUTH,
        "WRK_HEADERS": headers,
        "WRK_COUNT_STATUS": "1",
    }
    if body_file is not None:
        env["WRK_BODY_FILE"] = str(body_file)
    cmd = [
        "wrk",
        "-t2",
        f"-c{connections}",
        f"-d{args.duration}s",
        "--timeout",
        "30s",
        "--latency",
        "-s",
        str(LUA_SCRIPT),
        url,
    ]
    print("==", " ".join(cmd), flush=True)
    output = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.duration + 90).stdout
    stats = parse_wrk_output(output)
    if stats.non_2xx:
        raise BenchError(f"wrk against {url}: {stats.non_2xx} non-2xx responses\n{output}")
    return {"rps": stats.rps, "p50_ms": stats.p50_ms, "p99_ms": stats.p99_ms}


def slow_scenario(base_url: str) -> dict[str, dict[str, int]]:
    counts: dict[str, Counter[int]] = {"stuck": Counter(), "fast": Counter()}
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(base_url=base_url, headers={"Authorization": DEV_AUTH}, timeout=60) as http:
            for number in range(9):
                kind = "stuck" if number % 3 == 0 else "fast"
                sleep_s = 5 if kind == "stuck" else 0.2
                status = http.post(
                    "/v1/models/slow/predict", json={"input": {"sleep_s": sleep_s}}
                ).status_code
                with lock:
                    counts[kind][status] += 1

    clients = [threading.Thread(target=client) for _ in range(6)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join()
    return {kind: {str(status): n for status, n in sorted(found.items())} for kind, found in counts.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--only-slow", action="store_true", help="only the slow-model scenario")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="inferd-isolation-bench-"))
    body_file, header_length = tensor_body(workdir)
    results: dict[str, dict[str, Any]] = {}
    try:
        for mode in ("thread", "process"):
            models = repository(workdir / f"models-{mode}", mode)
            port = free_port()
            env = {k: v for k, v in os.environ.items() if not k.startswith("INFERD_")}
            env["INFERD_ACCESS_LOG"] = str(workdir / f"access-{mode}.log")
            env["INFERD_MAX_BODY_BYTES"] = str(4 * 1024 * 1024)  # the 1 MiB tensor plus its header
            command = [
                *inferd_command(),
                "serve",
                "--models",
                str(models),
                "--dev",
                "--host",
                HOST,
                "--port",
                str(port),
                "--no-grpc",
            ]
            server = Server(f"inferd[{mode}]", command, port, workdir / f"inferd-{mode}.log", env)
            server.start()
            try:
                server.wait_ready("/readyz", 120)
                base = server.base_url
                with httpx.Client(base_url=base, headers={"Authorization": DEV_AUTH}, timeout=30) as http:
                    for _ in range(20):
                        assert (
                            http.post("/v1/models/iris/versions/2/predict", content=IRIS_BODY).status_code
                            == 200
                        )
                row: dict[str, Any] = {}
                if args.only_slow:
                    row["slow"] = slow_scenario(base)
                    results[mode] = row
                    continue
                row["iris"] = wrk(
                    f"{base}/v1/models/iris/versions/2/predict",
                    args,
                    connections=args.connections,
                    body=IRIS_BODY,
                )
                row["tensor_1mib"] = wrk(
                    f"{base}/v2/models/echo/infer",
                    args,
                    connections=4,
                    body_file=body_file,
                    headers=f"Inference-Header-Content-Length: {header_length}",
                    content_type="application/octet-stream",
                )
                started = time.monotonic()
                row["slow"] = slow_scenario(base)
                row["slow"]["seconds"] = round(time.monotonic() - started, 1)  # type: ignore[assignment]
                results[mode] = row
            finally:
                server.stop()
    except BenchError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    print()
    for what in () if args.only_slow else ("iris", "tensor_1mib"):
        thread, process = results["thread"][what], results["process"][what]
        print(
            f"{what:>12}: thread {thread['rps']:8.0f} rps (p99 {thread['p99_ms']:.1f} ms), process "
            f"{process['rps']:8.0f} rps (p99 {process['p99_ms']:.1f} ms): process/thread = "
            f"{process['rps'] / thread['rps']:.2f}"
        )
    for mode in ("thread", "process"):
        print(f"slow scenario, {mode:>7}: {results[mode]['slow']}")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"isolation-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"config": vars(args), "results": results}, indent=2) + "\n")
    print(f"results written to {out}")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
