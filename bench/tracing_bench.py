"""What tracing costs on the predict path: echo through PredictionService (executor and pipeline, no HTTP)
in one process, with tracing off and with OpenTelemetry on (SDK, batch processor as in production, in-memory exporter), rounds interleaved
so both see the same machine load. Prints microseconds per call and the on/off ratio.

    python bench/tracing_bench.py [--rounds 5] [--calls 19200] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from inferd.bootstrap import Engine, build_engine
from inferd.core.settings import load_settings
from inferd.tracing import Tracing

MODELS = Path(__file__).resolve().parents[1] / "examples" / "models"


async def per_call_us(engine: Engine, calls: int, concurrency: int) -> float:
    predict = engine.prediction.predict

    async def one() -> None:
        await predict(tenant="bench", model="echo", version="1", inputs=[[1, 2, 3]], indexed=False)

    started = time.perf_counter()
    for _ in range(calls // concurrency):
        await asyncio.gather(*(one() for _ in range(concurrency)))
    return (time.perf_counter() - started) / calls * 1e6


async def main(args: argparse.Namespace) -> None:
    settings = load_settings(
        flags={"models": MODELS, "access_log": "off", "log_level": "warning"}, environ={}
    )
    exporter = InMemorySpanExporter()
    engines = {
        "off": build_engine(settings),
        "on": build_engine(settings, tracing=Tracing(processor=BatchSpanProcessor(exporter))),
    }
    results: dict[str, list[float]] = {name: [] for name in engines}
    try:
        for engine in engines.values():  # warm-up
            await per_call_us(engine, 2000, args.concurrency)
        for _ in range(args.rounds):
            for name, engine in engines.items():
                results[name].append(await per_call_us(engine, args.calls, args.concurrency))
                exporter.clear()
    finally:
        for engine in engines.values():
            engine.close()
    off, on = statistics.median(results["off"]), statistics.median(results["on"])
    for name, values in results.items():
        print(
            f"tracing {name:3}: median {statistics.median(values):6.2f} us/call  rounds {', '.join(f'{v:.2f}' for v in values)}"
        )
    print(f"on/off = {on / off:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=19200)
    parser.add_argument("--concurrency", type=int, default=32)
    asyncio.run(main(parser.parse_args()))
