"""The "floor" for the HTTP benchmark: the cheapest FastAPI endpoint that still reads a JSON body.

inferd cannot be faster than this on the same machine with the same server stack (uvicorn + uvloop +
httptools, one process), so bench/http_bench.py reports inferd's throughput as a ratio to it.

Run by hand:
    python -m uvicorn bench.floor_app:app --loop uvloop --http httptools --no-access-log --port 8001
"""

from fastapi import FastAPI, Request

app = FastAPI()


@app.post("/predict")
async def predict(request: Request) -> dict[str, str]:
    await request.body()
    return {"output": "fixed"}
