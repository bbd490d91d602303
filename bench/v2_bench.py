#!/usr/bin/env python3
"""Open Inference Protocol (V2) benchmark: inferd against MLServer 1.7 on the same iris artifact, and a
1 MiB FP32 tensor through V2 JSON vs the binary extension, all in one run with interleaved rounds.

    python bench/v2_bench.py [--mlserver-venv /tmp/mlserver-venv] [--duration 10] [--rounds 3]
                             [--connections 16] [--skip-rest] [--skip-tensor]

MLServer lives in its own virtual environment, never in inferd's (its pins conflict with the dev extra):

    python3 -m venv /tmp/mlserver-venv
    /tmp/mlserver-venv/bin/pip install 'mlserver>=1.7,<1.8' 'mlserver-sklearn>=1.7,<1.8' 'uvloop<0.22'
    sudo apt-get install wrk nghttp2-client      # HTTP/1.1 and HTTP/2 (gRPC) load generators

Servers (free local ports, logs in a temporary directory):

* inferd: ``inferd serve --models examples/models --dev`` (defaults; access log to a file, body limit
  raised to 16 MiB for the 1 MiB tensor's JSON form, gRPC on its own free port);
* inferd-batched: the same, on a repository holding the same iris version with ``max_delay_ms: 2`` added
  (adaptive batching: a free executor thread waits up to 2 ms to fill a model call);
* MLServer with ``examples/models/iris/2/model.joblib`` (mlserver_sklearn.SKLearnModel, version "2"), in
  three configurations: ``parallel_workers=0`` (inference on the server's event loop), the default
  ``parallel_workers=1`` (an inference worker process), and ``parallel_workers=0`` with adaptive batching
  (``max_batch_size=16``, ``max_batch_time=0.002``); the best of the three, per protocol, is the baseline.

Targets (each checked once for a correct answer before any load):

* gRPC ``ModelInfer`` iris version 2, the same request bytes to every server (FP32 [1, 4], raw contents),
  with h2load (``-c C -m 1``, one thread); inferd also gets ``authorization: Bearer dev``;
* V2 REST ``POST /v2/models/iris/versions/2/infer``, the same JSON body to every server, with wrk
  (``-t2 -cC``);
* 1 MiB tensor: inferd's ``echo`` model, FP32 [1, 262144] in and out, as V2 JSON (``data``) and as binary
  (``Inference-Header-Content-Length`` + raw bytes, ``binary_data_output``), with wrk (``-c4``).

Every round runs every target once, in the same order; the table reports per-target medians of
requests/s and of the server's CPU time per request (user + system of every process in the server's
process group, over the measured window; far steadier than requests/s on a shared machine), and the goal
lines are ratios of medians from this run:

    grpc:   each inferd config / MLServer's best gRPC     goal >= 2
    rest:   each inferd config / MLServer's best V2 REST  goal >= 2
    tensor: binary / JSON requests per second        goal >= 10

Results (and every raw load-generator output) go to bench/results/v2-<timestamp>.json (git-ignored).
Exit status: 0 ok (goals are reported, not enforced); 1 setup or run error; 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from http_bench import (  # noqa: E402  (the sibling script's process and wrk helpers)
    HOST,
    LUA_SCRIPT,
    REPO_ROOT,
    RESULTS_DIR,
    BenchError,
    Server,
    free_port,
    parse_wrk_output,
)

IRIS_ARTIFACT = REPO_ROOT / "examples" / "models" / "iris" / "2" / "model.joblib"
IRIS_ROW = [5.1, 3.5, 1.4, 0.2]  # setosa: class 0
TENSOR_ELEMENTS = 262144  # FP32: 1 MiB
DEV_AUTH = "Bearer dev"
GRPC_PATH = "/inference.GRPCInferenceService/ModelInfer"
GOALS = {"grpc": 2.0, "rest": 2.0, "tensor": 10.0}


@dataclass
class Endpoint:
    name: str
    server: Server
    grpc_port: int
    auth: str | None


@dataclass
class Target:
    group: str  # grpc | rest | tensor
    name: str
    server: Server
    run: Callable[[argparse.Namespace], tuple[float, int, str]]  # -> (requests/s, requests, raw output)
    rps: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)  # server CPU time per request, all its processes
    outputs: list[str] = field(default_factory=list)


def server_cpu_s(server: Server) -> float:
    """User + system CPU seconds of every live process in the server's process group (its own session)."""
    assert server.proc is not None
    group = server.proc.pid
    ticks = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        fields = text[text.rfind(")") + 2 :].split()
        if int(fields[2]) == group:  # pgrp
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


# -- request bodies ----------------------------------------------------------------------------------


def grpc_iris_frame() -> bytes:
    """A length-prefixed gRPC message: ModelInferRequest for iris version 2, raw FP32 contents."""
    from inferd.grpc.messages import ModelInferRequest

    request = ModelInferRequest(model_name="iris", model_version="2")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 4])
    request.raw_input_contents.append(np.asarray(IRIS_ROW, dtype="<f4").tobytes())
    message = request.SerializeToString()
    return b"\x00" + struct.pack(">I", len(message)) + message


def rest_iris_body() -> bytes:
    tensor = {"name": "input", "shape": [1, 4], "datatype": "FP32", "data": IRIS_ROW}
    return json.dumps({"inputs": [tensor]}).encode()


def tensor_bodies() -> tuple[bytes, bytes, int]:
    """(JSON body, binary body, length of the binary body's JSON header) for the 1 MiB FP32 tensor."""
    values = np.random.default_rng(7).random(TENSOR_ELEMENTS, dtype=np.float32)
    shape = [1, TENSOR_ELEMENTS]
    as_json = json.dumps(
        {"inputs": [{"name": "x", "shape": shape, "datatype": "FP32", "data": values.tolist()}]}
    )
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": shape,
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": values.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    return as_json.encode(), header + values.astype("<f4").tobytes(), len(header)


# -- checks before load --------------------------------------------------------------------------------


def check_grpc(endpoint: Endpoint) -> None:
    import grpc

    from inferd.grpc.messages import ModelInferRequest, ModelInferResponse

    frame = grpc_iris_frame()
    with grpc.insecure_channel(f"{HOST}:{endpoint.grpc_port}") as channel:
        stub = channel.unary_unary(
            GRPC_PATH,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=ModelInferResponse.FromString,
        )
        metadata = (("authorization", endpoint.auth),) if endpoint.auth else ()
        try:
            response = stub(ModelInferRequest.FromString(frame[5:]), metadata=metadata, timeout=30)
        except grpc.RpcError as exc:
            raise BenchError(f"gRPC check of {endpoint.name} failed: {exc}") from exc
    label = np.frombuffer(response.raw_output_contents[0], dtype="<i8").tolist()
    if label != [0]:
        raise BenchError(f"gRPC check of {endpoint.name}: expected class [0], got {label}")


def check_http(
    name: str, url: str, body: bytes, headers: dict[str, str], expect: Callable[[httpx.Response], bool]
) -> None:
    with httpx.Client(timeout=60) as client:
        response = client.post(url, content=body, headers=headers)
    if response.status_code != 200 or not expect(response):
        raise BenchError(
            f"check of {name} (POST {url}) got HTTP {response.status_code}: {response.text[:500]}"
        )


# -- load generators -----------------------------------------------------------------------------------

_H2_RPS = re.compile(r"finished in [0-9.]+s, ([0-9.]+) req/s")
_H2_REQUESTS = re.compile(
    r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored"
)


def run_h2load(endpoint: Endpoint, frame_path: Path, args: argparse.Namespace) -> tuple[float, int, str]:
    load = [f"-c{args.connections}", "-m1", "-t1"]
    # Connections are opened and warmed by a short run first, so the measured window (and the server CPU
    # time counted for it) holds only the measured requests.
    _h2load(endpoint, frame_path, args, [*load, "-n", str(20 * args.connections)])
    output = _h2load(endpoint, frame_path, args, [*load, f"-D{args.duration}"])
    rps, requests = _H2_RPS.search(output), _H2_REQUESTS.search(output)
    if not rps or not requests:
        raise BenchError(f"cannot parse h2load output:\n{output}")
    return float(rps.group(1)), int(requests.group(3)), output


def _h2load(endpoint: Endpoint, frame_path: Path, args: argparse.Namespace, load: list[str]) -> str:
    cmd = [
        args.h2load,
        *load,
        "-d",
        str(frame_path),
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
    ]
    if endpoint.auth:
        cmd += ["-H", f"authorization: {endpoint.auth}"]
    cmd.append(f"http://{HOST}:{endpoint.grpc_port}{GRPC_PATH}")
    output = _run(cmd, args)
    requests = _H2_REQUESTS.search(output)
    if not requests or int(requests.group(4)) or int(requests.group(5)):
        raise BenchError(f"h2load against {endpoint.name} failed or saw failed requests:\n{output}")
    endpoint.server.check_alive()
    return output


def run_wrk(
    url: str,
    body_path: Path,
    headers: dict[str, str],
    connections: int,
    args: argparse.Namespace,
    server: Server,
    *,
    duration: int | None = None,
) -> tuple[float, int, str]:
    env = dict(os.environ)
    extra = {
        name: value
        for name, value in headers.items()
        if name.lower() not in ("content-type", "authorization")
    }
    env.update(
        WRK_METHOD="POST",
        WRK_BODY_FILE=str(body_path),
        WRK_CONTENT_TYPE=headers.get("Content-Type", "application/json"),
        WRK_AUTH=headers.get("Authorization", ""),
        WRK_HEADERS="\n".join(f"{name}: {value}" for name, value in extra.items()),
        WRK_COUNT_STATUS="1",
    )
    seconds = duration or args.duration
    # A 1 MiB JSON request takes hundreds of ms: wrk's default 2 s timeout would count queued ones as errors.
    cmd = [args.wrk, "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "60s", "--latency"]
    cmd += ["-s", str(LUA_SCRIPT), url]
    output = _run(cmd, args, env=env, timeout=seconds + 90)
    stats = parse_wrk_output(output)
    if stats.non_2xx or any(stats.socket_errors.values()):
        raise BenchError(f"wrk against {url} saw errors:\n{output}")
    server.check_alive()
    return stats.rps, stats.requests, output


def _run(
    cmd: Sequence[str],
    args: argparse.Namespace,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
) -> str:
    print(f"  $ {shlex.join(cmd)}", flush=True)
    try:
        proc = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=timeout or args.duration + 60, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{cmd[0]} did not finish in time") from exc
    if proc.returncode != 0:
        raise BenchError(f"{cmd[0]} exited with {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


# -- servers ---------------------------------------------------------------------------------------------


def start_inferd(
    workdir: Path, args: argparse.Namespace, *, name: str, models: Path, source: Path | None = None
) -> Endpoint:
    """``source``: run the inferd of that source tree (its ``src`` first on PYTHONPATH), e.g. an export
    of main, to compare two builds in one run."""
    port, grpc_port = free_port(), free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("INFERD_")}
    if source is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(source.resolve() / "src"), env.get("PYTHONPATH")])
        )
    env.update(
        INFERD_ACCESS_LOG=str(workdir / f"{name}-access.log"),
        INFERD_STORE=f"sqlite:///{workdir / f'{name}-jobs.db'}",
        INFERD_MAX_BODY_BYTES=str(16 * 1024 * 1024),
        INFERD_GRPC_PORT=str(grpc_port),
    )
    cmd = [args.inferd, "serve", "--models", str(models), "--dev", "--port", str(port)]
    server = Server(name, cmd, port, workdir / f"{name}.log", env=env)
    server.start()
    server.wait_ready("/readyz", 90)
    return Endpoint(name, server, grpc_port, DEV_AUTH)


def batched_repository(workdir: Path) -> Path:
    """The same iris artifact and model.yaml, plus adaptive batching: a free executor thread waits up to
    2 ms for more requests (gRPC requests reach the loop one by one, so without it most calls hold one row)."""
    repo = workdir / "inferd-batched-models"
    shutil.copytree(REPO_ROOT / "examples" / "models" / "iris" / "2", repo / "iris" / "2")
    spec = repo / "iris" / "2" / "model.yaml"
    spec.write_text(spec.read_text() + "max_delay_ms: 2\n")
    return repo


def start_mlserver(
    workdir: Path, parallel_workers: int, args: argparse.Namespace, *, adaptive_batching: bool = False
) -> Endpoint:
    name = f"mlserver-pw{parallel_workers}" + ("-batch" if adaptive_batching else "")
    repo = workdir / name
    (repo / "iris").mkdir(parents=True)
    shutil.copy(IRIS_ARTIFACT, repo / "iris" / "model.joblib")
    settings = {
        "name": "iris",
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib", "version": "2"},
    }
    if adaptive_batching:
        settings.update(max_batch_size=16, max_batch_time=0.002)
    (repo / "iris" / "model-settings.json").write_text(json.dumps(settings))
    port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    env = dict(os.environ)
    env.update(
        MLSERVER_HOST=HOST,
        MLSERVER_HTTP_PORT=str(port),
        MLSERVER_GRPC_PORT=str(grpc_port),
        MLSERVER_METRICS_PORT=str(metrics_port),
        MLSERVER_PARALLEL_WORKERS=str(parallel_workers),
    )
    cmd = [str(Path(args.mlserver_venv) / "bin" / "mlserver"), "start", str(repo)]
    server = Server(name, cmd, port, workdir / f"{name}.log", env=env)
    server.start()
    server.wait_ready("/v2/models/iris/versions/2/ready", 120)
    return Endpoint(name, server, grpc_port, None)


# -- the run ---------------------------------------------------------------------------------------------


def build_targets(endpoints: list[Endpoint], workdir: Path, args: argparse.Namespace) -> list[Target]:
    frame_path = workdir / "iris.grpc"
    frame_path.write_bytes(grpc_iris_frame())
    rest_path = workdir / "iris.json"
    rest_path.write_bytes(rest_iris_body())
    targets: list[Target] = []
    for endpoint in endpoints:
        check_grpc(endpoint)
        targets.append(
            Target("grpc", endpoint.name, endpoint.server, lambda a, e=endpoint: run_h2load(e, frame_path, a))
        )
    if not args.skip_rest:
        for endpoint in endpoints:
            url = f"{endpoint.server.base_url}/v2/models/iris/versions/2/infer"
            headers = {"Content-Type": "application/json"}
            if endpoint.auth:
                headers["Authorization"] = endpoint.auth
            check_http(
                f"{endpoint.name} V2 REST",
                url,
                rest_iris_body(),
                headers,
                lambda r: r.json()["outputs"][0]["data"] in ([0], [[0]]),
            )
            targets.append(
                Target(
                    "rest",
                    endpoint.name,
                    endpoint.server,
                    lambda a, u=url, h=headers, e=endpoint: run_wrk(
                        u, rest_path, h, a.connections, a, e.server
                    ),
                )
            )
    if not args.skip_tensor:
        inferd = endpoints[0]  # default settings
        as_json, binary, header_length = tensor_bodies()
        json_path, binary_path = workdir / "tensor.json", workdir / "tensor.bin"
        json_path.write_bytes(as_json)
        binary_path.write_bytes(binary)
        url = f"{inferd.server.base_url}/v2/models/echo/infer"
        json_headers = {"Content-Type": "application/json", "Authorization": DEV_AUTH}
        binary_headers = {
            "Content-Type": "application/octet-stream",
            "Authorization": DEV_AUTH,
            "Inference-Header-Content-Length": str(header_length),
        }
        check_http(
            "tensor JSON",
            url,
            as_json,
            json_headers,
            lambda r: len(r.json()["outputs"][0]["data"]) == TENSOR_ELEMENTS,
        )
        check_http(
            "tensor binary",
            url,
            binary,
            binary_headers,
            lambda r: len(r.content) > 4 * TENSOR_ELEMENTS and "inference-header-content-length" in r.headers,
        )
        for name, path, headers in (
            ("json", json_path, json_headers),
            ("binary", binary_path, binary_headers),
        ):
            targets.append(
                Target(
                    "tensor",
                    name,
                    inferd.server,
                    # JSON manages a few requests per second: at least 10 s for a usable count.
                    lambda a, p=path, h=headers: run_wrk(
                        url, p, h, a.tensor_connections, a, inferd.server, duration=max(a.duration, 10)
                    ),
                )
            )
    return targets


def report(targets: list[Target]) -> tuple[list[dict[str, Any]], list[str]]:
    rows = [
        {
            "group": t.group,
            "target": t.name,
            "median_rps": statistics.median(t.rps),
            "median_cpu_us_per_request": statistics.median(t.cpu_us),
            "rounds_rps": t.rps,
            "rounds_cpu_us_per_request": t.cpu_us,
        }
        for t in targets
    ]
    median = {(row["group"], row["target"]): row["median_rps"] for row in rows}
    cpu = {(row["group"], row["target"]): row["median_cpu_us_per_request"] for row in rows}
    lines = []
    for group in ("grpc", "rest"):
        ours = [name for (g, name) in median if g == group and name.startswith("inferd")]
        theirs = [name for (g, name) in median if g == group and name.startswith("mlserver")]
        if not ours or not theirs:
            continue
        best = max(theirs, key=lambda name: median[(group, name)])
        cheapest = min(theirs, key=lambda name: cpu[(group, name)])
        for name in ours:
            ratio = median[(group, name)] / median[(group, best)]
            capacity = cpu[(group, cheapest)] / cpu[(group, name)]
            lines.append(
                f"{group}: {name} / {best} (MLServer's best) = {ratio:.2f} (goal >= {GOALS[group]:g}); "
                f"server CPU per request, {cheapest} / {name} = {capacity:.2f}"
            )
    if ("tensor", "json") in median:
        ratio = median[("tensor", "binary")] / median[("tensor", "json")]
        lines.append(f"tensor: binary / json = {ratio:.2f} (goal >= {GOALS['tensor']:g})")
    return rows, lines


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mlserver-venv", default="/tmp/mlserver-venv")
    parser.add_argument("--duration", type=int, default=10, help="seconds per load run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16, help="iris: connections (h2load -c, wrk -c)")
    parser.add_argument("--tensor-connections", type=int, default=4)
    parser.add_argument("--skip-rest", action="store_true", help="no V2 REST iris targets")
    parser.add_argument("--skip-tensor", action="store_true", help="no 1 MiB JSON/binary targets")
    parser.add_argument(
        "--skip-batched", action="store_true", help="no inferd-batched (max_delay_ms: 2) server"
    )
    parser.add_argument(
        "--compare-source",
        type=Path,
        help="also run the inferd of this source tree with default settings (target inferd-compared), "
        "e.g. an export of main: before/after in one run",
    )
    parser.add_argument("--wrk", default=shutil.which("wrk") or "wrk")
    parser.add_argument("--h2load", default=shutil.which("h2load") or "h2load")
    parser.add_argument("--inferd", default=shutil.which("inferd") or "inferd")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not (Path(args.mlserver_venv) / "bin" / "mlserver").exists():
        print(
            f"no MLServer in {args.mlserver_venv}: create it as this script's docstring says", file=sys.stderr
        )
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="inferd-v2-bench-"))
    endpoints: list[Endpoint] = []
    try:
        endpoints.append(start_inferd(workdir, args, name="inferd", models=REPO_ROOT / "examples" / "models"))
        if not args.skip_batched:
            endpoints.append(
                start_inferd(workdir, args, name="inferd-batched", models=batched_repository(workdir))
            )
        if args.compare_source is not None:
            endpoints.append(
                start_inferd(
                    workdir,
                    args,
                    name="inferd-compared",
                    models=REPO_ROOT / "examples" / "models",
                    source=args.compare_source,
                )
            )
        endpoints.append(start_mlserver(workdir, 0, args))
        endpoints.append(start_mlserver(workdir, 1, args))
        endpoints.append(start_mlserver(workdir, 0, args, adaptive_batching=True))
        targets = build_targets(endpoints, workdir, args)
        for round_index in range(args.rounds):
            for target in targets:
                print(f"round {round_index + 1}/{args.rounds}: {target.group} {target.name}", flush=True)
                cpu_before = server_cpu_s(target.server)
                rps, requests, output = target.run(args)
                cpu_us = (server_cpu_s(target.server) - cpu_before) / max(requests, 1) * 1e6
                print(f"  -> {rps:.1f} req/s, server CPU {cpu_us:.0f} us/request", flush=True)
                target.rps.append(rps)
                target.cpu_us.append(cpu_us)
                target.outputs.append(output)
        rows, lines = report(targets)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        print(f"logs kept in {workdir}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        for endpoint in endpoints:
            endpoint.server.stop()
    print(f"\n{'group':<8}{'target':<20}{'median req/s':>14}{'CPU us/req':>12}   rounds (req/s)")
    for row in rows:
        rounds = ", ".join(f"{value:.0f}" for value in row["rounds_rps"])
        print(
            f"{row['group']:<8}{row['target']:<20}{row['median_rps']:>14.1f}"
            f"{row['median_cpu_us_per_request']:>12.0f}   {rounds}"
        )
    print()
    for line in lines:
        print(line)
    RESULTS_DIR.mkdir(exist_ok=True)
    result_path = RESULTS_DIR / f"v2-{time.strftime('%Y%m%d-%H%M%S')}.json"
    result = {
        "args": {**vars(args), "compare_source": str(args.compare_source)},
        "rows": rows,
        "goals": lines,
        "raw": {f"{t.group}/{t.name}": t.outputs for t in targets},
        "cpus": os.cpu_count(),
        "loadavg": os.getloadavg(),
    }
    result_path.write_text(json.dumps(result, indent=2))
    print(f"results: {result_path}")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
