"""The server a user would write around headreg without ``headreg serve``: the same ASGI stack (Starlette on
uvicorn), one ``Predictor.predict`` per request in Starlette's thread pool, no batching across requests.

    python -m benchmarks.naive_server BUNDLE --port 8081 --threads 2

It answers ``POST /v1/models/{name}/predict`` with the same JSON as ``headreg serve`` so one load generator
drives both (benchmarks/serve.py).
"""

from __future__ import annotations

import argparse

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from headreg.runtime import Predictor


def create_app(predictor: Predictor) -> Starlette:
    async def predict(request: Request) -> JSONResponse:
        body = await request.json()
        outputs = await run_in_threadpool(predictor.predict, body["inputs"], **body.get("parameters", {}))
        return JSONResponse({"model": request.path_params["name"], "outputs": outputs})

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[
        Route("/health", health), Route("/v1/models/{name}/predict", predict, methods=["POST"]),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.naive_server")
    parser.add_argument("bundle")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    app = create_app(Predictor(args.bundle, threads=args.threads))
    uvicorn.run(app, host="127.0.0.1", port=args.port, access_log=False, log_level="warning")


if __name__ == "__main__":
    main()
