#!/usr/bin/env python3
"""Scheduling under load: goodput, model isolation, tenant fairness, adaptive batching, in one run.

    python bench/sched_bench.py [--scenario all|goodput|isolation|fairness|batching] [--duration 10]

Starts one `inferd serve` on a generated model repository (see `write_repository`) with four devices,
so each scenario has the thread count the issue names and none disturbs another:

  * cpu=5   `slow` (sleeps 0.5 s per request, max_batch_size 1, timeout_s 1, max_concurrency 4: its
            capacity is 4 threads / 0.5 s = 8 requests/s) and `iris` (scikit-learn); the fifth thread
            is what isolation means: slow may never hold it
  * fair=1  `fixed` (20 ms per call, max_batch_size 1, one thread): tenant fairness. One thread, so
            that B's 2 connections can use its fair half: with 4 threads B could hold at most 2 of 4
  * spin=4  `spin0m` / `spin0` / `spin5`: a fixed 5 ms of pure Python work per call whatever the
            batch (it holds the GIL), max_batch_size 8: merge-only (max_delay_ms 0, batch_while_busy
            false), the default (max_delay_ms 0, batching while busy), max_delay_ms 5
  * gpu=1   `open0` / `open30`: a fixed 5 ms of wall time per call on one thread, max_delay_ms 0 / 30

Load comes from a small asyncio HTTP/1.1 client in this process (keep-alive connections): open loop
(requests sent at a fixed rate whatever the answers, new connections as needed) or closed loop (N
connections, each sending its next request when the previous answer arrives). The batching scenario's
open loop also runs from h2load (C: one new connection per request on a fixed schedule), so latency the
Python client adds shows as a difference between the two. ``--compare-source DIR`` runs the batching
scenario on a second server built from another source tree too, rounds interleaved. Every number
printed is a ratio or a count from this one run. Results also go to bench/results/sched-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
HOST = "127.0.0.1"
KEYS = "ka:A:predict;kb:B:predict;kc:C:predict;kd:D:predict"
SLOW_CAPACITY = 8.0  # requests/s: 4 threads / 0.5 s
H2LOAD = shutil.which("h2load")  # precise open-loop arrivals (nghttp2-client); the batching scenario

SLEEPY = """
import time

class Model:
    def predict(self, batch):
        for item in batch:
            time.sleep(item.get("sleep_s", 0.02))
        return [1 for _ in batch]
"""

SPIN = """
import time

class Model:
    def predict(self, batch):
        end = time.perf_counter() + 0.005  # a fixed 5 ms of wall time per call, like a device call
        while time.perf_counter() < end:
            pass
        return list(batch)
"""

# Pure Python holding the GIL: a fixed amount of work per call, whatever the batch size. Unlike spinning on
# the clock, two such calls side by side take twice as long: they share the interpreter, as real Python
# models do. The amount is sized once per bench run (`work_iterations`) and written into every model and
# server of the run: sized at each model's load, it varied by up to 20 % between models loaded seconds
# apart, and that difference went straight into the rps ratios.
WORK = """
def _work(n):
    total = 0
    for i in range(n):
        total += i
    return total

class Model:
    def predict(self, batch):
        _work(ITERATIONS)
        return list(batch)
"""


def _work(n: int) -> int:
    total = 0
    for i in range(n):
        total += i
    return total


def work_iterations(seconds: float = 0.005) -> int:
    """Iterations of WORK's loop that take ``seconds`` of this thread's CPU time, from the fastest of
    five timings of at least 50 ms each: on a shared machine a timing is only ever slowed (a busy
    sibling core, frequency), so the fastest is the steadiest between runs."""
    n = 20_000
    while True:
        start = time.thread_time()
        _work(n)
        if time.thread_time() - start > 0.05:
            break
        n *= 2
    rates = []
    for _ in range(5):
        start = time.thread_time()
        _work(n)
        rates.append(n / (time.thread_time() - start))
    return max(1, int(max(rates) * seconds))


def write_repository(root: Path, iterations: int) -> None:
    def model(name: str, spec: str, source: str | None = None, artifact: Path | None = None) -> None:
        folder = root / name / "1"
        folder.mkdir(parents=True)
        (folder / "model.yaml").write_text(textwrap.dedent(spec))
        if source is not None:
            (folder / "m.py").write_text(source)
        if artifact is not None:
            (folder / artifact.name).write_bytes(artifact.read_bytes())

    python = "runtime: python\nmodel: m:Model\n"
    work = f"ITERATIONS = {iterations}\n{WORK}"
    model("slow", python + "device: cpu\ntimeout_s: 1\nmax_batch_size: 1\nmax_concurrency: 4\n", SLEEPY)
    iris = ROOT / "examples" / "models" / "iris" / "2" / "model.joblib"
    model("iris", "runtime: sklearn\nartifact: model.joblib\ndevice: cpu\nmax_batch_size: 64\n", None, iris)
    model("fixed", python + "device: fair\nmax_batch_size: 1\nqueue_limit: 256\n", SLEEPY)
    spin = python + "device: spin\nmax_batch_size: 8\n"
    for delay in (0, 5):
        model(f"spin{delay}", spin + f"max_delay_ms: {delay}\n", work)
    # The baseline: what a free thread does without any batching policy (merge what is queued).
    model("spin0m", spin + "max_delay_ms: 0\nbatch_while_busy: false\n", work)
    for delay in (0, 30):
        model(f"open{delay}", python + f"device: gpu\nmax_batch_size: 8\nmax_delay_ms: {delay}\n", SPIN)


CONFIG = """
devices: "cpu=5,fair=1,spin=4,gpu=1"
tenants:
  A: {weight: 1}
  B: {weight: 1}
  C: {weight: 3}
  D: {weight: 1}
"""


# ------------------------------------------------------------------------------ the load client


@dataclass
class Sample:
    sent: float
    status: int
    latency: float
    dropped: bool = False  # a 503 for a request admitted, then dropped unrun (not refused on arrival)


class Target:
    def __init__(self, path: str, body: dict[str, Any], key: str) -> None:
        payload = json.dumps(body).encode()
        self.request = (
            f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {key}\r\nContent-Length: {len(payload)}\r\n\r\n"
        ).encode() + payload


class Client:
    def __init__(self, port: int) -> None:
        self.port = port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.idle:
            return self.idle.pop()
        return await asyncio.open_connection(HOST, self.port)

    async def call(self, target: Target) -> Sample:
        sent = time.perf_counter()
        for attempt in range(2):
            # A pooled connection the server closed while idle (keep-alive timeout) fails at once:
            # retry once on a new one. A failure on a new connection is counted as status 0.
            pooled = bool(self.idle)
            reader, writer = await self._connection()
            try:
                writer.write(target.request)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
                body = await reader.readexactly(length)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                writer.close()
                if pooled and attempt == 0:
                    continue
                return Sample(sent, 0, time.perf_counter() - sent)
            self.idle.append((reader, writer))
            return Sample(
                sent, status, time.perf_counter() - sent, status == 503 and b"could not start" in body
            )
        return Sample(sent, 0, time.perf_counter() - sent)

    async def open_loop(self, target: Target, rate: float, duration: float) -> list[Sample]:
        tasks: list[asyncio.Task[Sample]] = []
        start = time.perf_counter()
        count = int(rate * duration)
        for index in range(count):
            delay = start + index / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(self.call(target)))
        return list(await asyncio.gather(*tasks))

    async def closed_loop(self, target: Target, connections: int, duration: float) -> list[Sample]:
        end = time.perf_counter() + duration

        async def one() -> list[Sample]:
            samples = []
            while time.perf_counter() < end:
                samples.append(await self.call(target))
            return samples

        results = await asyncio.gather(*(one() for _ in range(connections)))
        return [sample for samples in results for sample in samples]

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def count(samples: list[Sample], status: int) -> int:
    return sum(1 for s in samples if s.status == status)


def errors(samples: list[Sample]) -> dict[str, int]:
    """Non-200 answers by status (0: the connection failed)."""
    found: dict[str, int] = {}
    for sample in samples:
        if sample.status != 200:
            found[str(sample.status)] = found.get(str(sample.status), 0) + 1
    return found


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


# ------------------------------------------------------------------------------ the server


class Server:
    def __init__(
        self, workdir: Path, iterations: int, label: str = "inferd", source: Path | None = None
    ) -> None:
        """``iterations``: WORK's size (`work_iterations`). ``source``: serve the inferd of that source
        tree (its ``src`` first on PYTHONPATH) instead of this checkout's, e.g. a copy of main, to
        compare two builds in one run."""
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.label = label
        self.port = free_port()
        repo = workdir / "models"
        write_repository(repo, iterations)
        config = workdir / "inferd.yaml"
        config.write_text(CONFIG)
        script = Path(sys.executable).with_name("inferd")
        command = [str(script)] if script.exists() else [sys.executable, "-m", "inferd.cli"]
        env = {
            **os.environ,
            "INFERD_API_KEYS": KEYS,
            "INFERD_ACCESS_LOG": "off",
            "INFERD_LOG_LEVEL": "warning",
            "INFERD_STORE": f"sqlite:///{workdir / 'jobs.db'}",
        }
        if source is not None:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(source / "src"), env.get("PYTHONPATH")]))
        self.log = open(workdir / "server.log", "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [
                *command,
                "serve",
                "--models",
                str(repo),
                "--config",
                str(config),
                "--port",
                str(self.port),
                "--no-grpc",
            ],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"inferd exited; see {self.workdir / 'server.log'}")
            try:
                if httpx.get(f"http://{HOST}:{self.port}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"inferd did not become ready; see {self.workdir / 'server.log'}")

    def metric(self, name: str, model: str) -> float:
        import httpx

        text = httpx.get(f"http://{HOST}:{self.port}/metrics", timeout=5).text
        match = re.search(rf'^{name}\{{model="{model}",version="1"\}} ([0-9.e+]+)$', text, re.MULTILINE)
        return float(match.group(1)) if match else 0.0

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def predict(model: str, body: dict[str, Any], key: str = "ka") -> Target:
    return Target(f"/v1/models/{model}/predict", body, key)


# ------------------------------------------------------------------------------ scenarios


async def goodput(client: Client, duration: float) -> dict[str, Any]:
    """slow at 2x, 10x, 50x its capacity, open loop: share of capacity that succeeds, refusal latency."""
    target = predict("slow", {"input": {"sleep_s": 0.5}})
    await client.open_loop(target, SLOW_CAPACITY, 3.0)  # warm-up: the call-time estimate
    levels = {}
    for factor in (2, 10, 50):
        samples = await client.open_loop(target, SLOW_CAPACITY * factor, duration)
        refused = [s.latency for s in samples if s.status == 503 and not s.dropped]
        dropped = sum(1 for s in samples if s.dropped)
        levels[f"{factor}x"] = {
            "offered": len(samples),
            "ok": count(samples, 200),
            "refused_503": len(refused),
            "dropped_503": dropped,
            "timeout_504": count(samples, 504),
            "other": len(samples) - count(samples, 200) - count(samples, 503) - count(samples, 504),
            "goodput_of_capacity": round(count(samples, 200) / (SLOW_CAPACITY * duration), 3),
            "refusal_p99_ms": ms(percentile(refused, 0.99)),
            "ok_p50_ms": ms(percentile([s.latency for s in samples if s.status == 200], 0.5)),
        }
        print(f"goodput {factor:>2}x: {levels[f'{factor}x']}", flush=True)
    return levels


async def isolation(client: Client, duration: float) -> dict[str, Any]:
    """iris at 50 rps alone, then beside slow saturated at 10x its capacity."""
    iris = predict("iris", {"input": [5.1, 3.5, 1.4, 0.2]}, "kb")
    slow = predict("slow", {"input": {"sleep_s": 0.5}})
    alone = await client.open_loop(iris, 50, duration)
    beside, slow_samples = await asyncio.gather(
        client.open_loop(iris, 50, duration), client.open_loop(slow, SLOW_CAPACITY * 10, duration)
    )
    p99_alone = percentile([s.latency for s in alone], 0.99)
    p99_beside = percentile([s.latency for s in beside], 0.99)
    result = {
        "iris_errors_alone": errors(alone),
        "iris_errors_beside_slow": errors(beside),
        "iris_p99_alone_ms": ms(p99_alone),
        "iris_p99_beside_slow_ms": ms(p99_beside),
        "iris_p99_ratio": round(p99_beside / p99_alone, 2),
        "slow_ok": count(slow_samples, 200),
        "slow_503": count(slow_samples, 503),
    }
    print(f"isolation: {result}", flush=True)
    return result


async def fairness(client: Client, duration: float) -> dict[str, Any]:
    """`fixed` (20 ms, 1 thread): B at 2 connections alone, then beside A at 64; C:D = 3:1 at 32 each."""
    body = {"input": {"sleep_s": 0.02}}
    alone = await client.closed_loop(predict("fixed", body, "kb"), 2, duration)
    heavy, light = await asyncio.gather(
        client.closed_loop(predict("fixed", body, "ka"), 64, duration),
        client.closed_loop(predict("fixed", body, "kb"), 2, duration),
    )
    gold, bronze = await asyncio.gather(
        client.closed_loop(predict("fixed", body, "kc"), 32, duration),
        client.closed_loop(predict("fixed", body, "kd"), 32, duration),
    )
    ok_a, ok_b, ok_c, ok_d = (count(s, 200) for s in (heavy, light, gold, bronze))
    p99_alone = percentile([s.latency for s in alone if s.status == 200], 0.99)
    p99_beside = percentile([s.latency for s in light if s.status == 200], 0.99)
    result = {
        "B_share_beside_A64": round(ok_b / (ok_a + ok_b), 3),
        "B_p99_alone_ms": ms(p99_alone),
        "B_p99_beside_A64_ms": ms(p99_beside),
        "B_p99_ratio": round(p99_beside / p99_alone, 2),
        "C_share_weights_3_1": round(ok_c / (ok_c + ok_d), 3),
        "errors": errors([*alone, *heavy, *light, *gold, *bronze]),
    }
    print(f"fairness: {result}", flush=True)
    return result


def h2load_open_loop(port: int, target: Target, rate: float, duration: float, workdir: Path) -> list[Sample]:
    """Open loop from h2load (C, one thread): one new HTTP/1.1 connection per request, created every
    1/rate s, so arrivals keep their schedule whatever this process or the server is doing."""
    head, _, body = target.request.partition(b"\r\n\r\n")
    request_line, *header_lines = head.decode().split("\r\n")
    path = request_line.split()[1]
    headers = [
        line for line in header_lines if line.split(":")[0].lower() in ("authorization", "content-type")
    ]
    body_path, log_path = workdir / "h2load-body.json", workdir / "h2load.log"
    body_path.write_bytes(body)
    log_path.unlink(missing_ok=True)
    count = int(rate * duration)
    command = [H2LOAD, "--h1", "-t1", f"-c{count}", f"-n{count}", "-r1", f"--rate-period={1000 / rate:g}ms"]
    command += ["-d", str(body_path), "--log-file", str(log_path)]
    for header in headers:
        command += ["-H", header]
    command.append(f"http://{HOST}:{port}{path}")
    subprocess.run(command, capture_output=True, check=True, timeout=duration + 60)
    samples = []
    for line in log_path.read_text().splitlines():
        started_us, status, elapsed_us = line.split("\t")[:3]
        samples.append(Sample(int(started_us) / 1e6, max(0, int(status)), int(elapsed_us) / 1e6))
    return samples


async def batching(
    pairs: list[tuple[Server, Client]], duration: float, rounds: int, workdir: Path, connections: int = 8
) -> dict[str, Any]:
    """Closed loop (spin, 4 threads, ``connections``) and open loop (one thread, 100 rps): max_delay vs 0,
    on each server (several: builds compared in one run, rounds interleaved)."""
    spins = ("spin0m", "spin0", "spin5")
    closed = {(server.label, name): [] for server, _ in pairs for name in spins}
    single = {(server.label, name): [] for server, _ in pairs for name in spins}
    for _ in range(rounds):  # interleaved: the machine's noise hits every target alike
        for server, client in pairs:
            for name in spins:
                samples = await client.closed_loop(predict(name, {"input": 1}), connections, duration)
                closed[(server.label, name)].append(count(samples, 200) / duration)
                samples = await client.closed_loop(predict(name, {"input": 1}), 1, duration / 2)
                single[(server.label, name)].append(percentile([s.latency for s in samples], 0.5))
    result: dict[str, Any] = {}
    for server, client in pairs:
        label = server.label
        spin0m, spin0, spin5 = (statistics.median(closed[(label, name)]) for name in spins)
        generators: dict[str, Any] = {}
        for generator in ("python", "h2load") if H2LOAD else ("python",):
            open_result: dict[str, Any] = {}
            for name in ("open0", "open30"):
                target = predict(name, {"input": 1})
                calls_before = server.metric("inference_batch_items_count", name)
                if generator == "python":
                    samples = await client.open_loop(target, 100, duration)
                else:
                    samples = await asyncio.to_thread(
                        h2load_open_loop, server.port, target, 100, duration, workdir
                    )
                calls = server.metric("inference_batch_items_count", name) - calls_before
                open_result[name] = {
                    "requests": len(samples),
                    "errors": errors(samples),
                    "calls_per_request": round(calls / max(len(samples), 1), 3),
                    "p50_ms": ms(percentile([s.latency for s in samples], 0.5)),
                    "p99_ms": ms(percentile([s.latency for s in samples], 0.99)),
                }
            open_result["fewer_calls_factor"] = round(
                open_result["open0"]["calls_per_request"]
                / max(open_result["open30"]["calls_per_request"], 1e-9),
                2,
            )
            generators[generator] = open_result
        result[label] = {
            "closed_rps": {"spin0m": round(spin0m, 1), "spin0": round(spin0, 1), "spin5": round(spin5, 1)},
            "closed_rps_rounds": {name: [round(v, 1) for v in closed[(label, name)]] for name in spins},
            "closed_rps_ratio_5ms_over_0": round(spin5 / spin0, 2),
            "closed_rps_ratio_5ms_over_merge_only": round(spin5 / spin0m, 2),
            "closed_rps_ratio_busy_over_merge_only": round(spin0 / spin0m, 2),
            "c1_p50_ms": {name: ms(statistics.median(single[(label, name)])) for name in spins},
            "open": generators,
        }
        print(f"batching [{label}]: {result[label]}", flush=True)
    return result


async def run(args: argparse.Namespace, servers: list[Server], workdir: Path) -> dict[str, Any]:
    pairs = [(server, Client(server.port)) for server in servers]
    server, client = pairs[0]
    results: dict[str, Any] = {}
    try:
        if args.scenario in ("all", "goodput"):
            results["goodput"] = await goodput(client, args.duration)
        if args.scenario in ("all", "isolation"):
            results["isolation"] = await isolation(client, args.duration)
        if args.scenario in ("all", "fairness"):
            results["fairness"] = await fairness(client, args.duration)
        if args.scenario in ("all", "batching"):
            results["batching"] = await batching(pairs, args.duration, args.rounds, workdir, args.connections)
    finally:
        for _, each in pairs:
            each.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--scenario", choices=["all", "goodput", "isolation", "fairness", "batching"], default="all"
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured phase")
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds of the closed-loop batching runs"
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=8,
        help="batching only: connections of the closed loop (the issue's goal: 8, a full batch; fewer: "
        "a closed loop that never fills max_batch_size 8)",
    )
    parser.add_argument(
        "--compare-source",
        type=Path,
        help="batching only: also serve the inferd of this source tree (e.g. an export of main), "
        "rounds interleaved with this checkout's",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="inferd-sched-") as tmp:
        workdir = Path(tmp)
        iterations = work_iterations()
        print(f"5 ms of WORK: {iterations} iterations", flush=True)
        servers = [Server(workdir / "inferd", iterations)]
        if args.compare_source is not None:
            servers.append(
                Server(workdir / "compared", iterations, "compared", args.compare_source.resolve())
            )
        try:
            for server in servers:
                server.wait_ready()
            results = asyncio.run(run(args, servers, workdir))
        finally:
            for server in servers:
                server.stop()
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"sched-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(
        json.dumps(
            {
                "args": {**vars(args), "compare_source": str(args.compare_source)},
                "work_iterations": iterations,
                "results": results,
            },
            indent=2,
        )
    )
    print(f"results written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
