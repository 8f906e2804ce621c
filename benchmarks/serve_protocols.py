"""The protocol routes of ``headreg serve`` against its native route, and a peer: ``python -m benchmarks.serve_protocols``.

MiniLM embeddings, one text per request from the mixed-length corpus, closed loop (``benchmarks/serve.py``'s
load generator) at 1, 8 and 32 clients, interleaved round by round on one ``headreg serve`` process:

- **native** ``POST /v1/models/minilm/embed``; **openai** ``POST /v1/embeddings`` (float vectors);
  **hf** ``POST /models/minilm/pipeline/feature-extraction``; **tei** ``POST /tei/minilm/embed`` (normalized,
  TEI's default); **v2** ``POST /v2/models/minilm/infer`` (the ``embedding`` output, JSON);
- **infinity** (the peer): infinity-emb's OpenAI-compatible ``POST /embeddings`` on the same MiniLM checkpoint
  (``headreg.testing.minilm_path()``) in float32 with the same threads (``--bf16``: headreg's bf16 variant
  against infinity in bfloat16), started as a process on 127.0.0.1 from
  ``--infinity-venv`` (default ``/tmp/infinity-venv``; left out when that has no ``infinity_emb``). Install it
  apart, it pins its own dependencies: ``python -m venv /tmp/infinity-venv &&
  /tmp/infinity-venv/bin/pip install torch==2.13.0 'infinity-emb[server,torch]'``.

``--model-workers N`` passes the same option to ``headreg serve`` (N batches at once, the threads split among
them; without it the server's default: an onnxruntime bundle runs two batches at once that share the threads); the
peer keeps its own defaults.

Reported per level: req/s, p50/p99 and server CPU time per request per route (the median round), each protocol's overhead against native
(target: at most 10 % fewer req/s at 32 clients) and headreg's OpenAI route against infinity's (target: at least
2.5x the req/s at 32 clients with a lower p99). The machine's load average is printed before and after: on a
shared machine the wall-clock figures move with it, the interleaving keeps the ratios fair. Writes
``serve_protocols.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

from .serve import MODEL, ROOT, Process, closed_loop, corpus, ensure_bundle, machine

ROUTES: dict[str, tuple[str, Callable[[str], dict[str, Any]]]] = {
    "native": (f"/v1/models/{MODEL}/embed", lambda text: {"inputs": [text]}),
    "openai": ("/v1/embeddings", lambda text: {"model": MODEL, "input": text, "encoding_format": "float"}),
    "hf": (f"/models/{MODEL}/pipeline/feature-extraction", lambda text: {"inputs": text}),
    "tei": (f"/tei/{MODEL}/embed", lambda text: {"inputs": text}),
    "v2": (f"/v2/models/{MODEL}/infer", lambda text: {
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}],
        "outputs": [{"name": "embedding"}]}),
}
PEER = ("/embeddings", lambda text: {"model": MODEL, "input": [text]})


def bf16_bundle(out: Path, rebuild: bool) -> Path:
    """The MiniLM bundle with a bf16 variant (``headreg export --bf16``), exported once."""
    bundle = out / "bundles" / "serve-minilm-bf16"
    if rebuild or not (bundle / "headreg.json").is_file():
        from headreg.testing import minilm_path

        subprocess.run([sys.executable, "-m", "headreg.cli", "export", str(minilm_path()), "--head", "seq_cls",
                        "--num-labels", "2", "--bf16", "-o", str(bundle), "--overwrite", "--json"],
                       check=True, stdout=subprocess.DEVNULL)
    return bundle


def start_infinity(venv: Path, threads: int, dtype: str) -> Process | None:
    """infinity-emb on MiniLM (torch, ``dtype``, ``threads`` threads), or None when it is not installed there."""
    executable = venv / "bin" / "infinity_emb"
    if not executable.is_file():
        print(f"no {executable}: the infinity row is left out (see this module's docstring to install it)", flush=True)
        return None
    from headreg.testing import minilm_path

    threads_env = {name: str(threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    return Process("infinity", [str(executable), "v2", "--model-id", str(minilm_path()), "--served-model-name", MODEL,
                                "--engine", "torch", "--dtype", dtype, "--device", "cpu", "--host", "127.0.0.1",
                                "--no-bettertransformer"], env={**threads_env, "INFINITY_ANONYMOUS_USAGE_STATS": "0"},
                   start_seconds=300)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serve_protocols", description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="1,8,32", help="concurrent client counts (default 1,8,32)")
    parser.add_argument("--threads", type=int, default=2, help="model threads of every server (default 2)")
    parser.add_argument("--requests", type=int, default=384, help="requests per measurement (default 384)")
    parser.add_argument("--seconds", type=float, default=10.0, help="time cap per measurement (default 10)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds per client count (default 2)")
    parser.add_argument("--model-workers", type=int, default=None,
                        help="headreg serve --model-workers: its batches running at once, --threads split among them "
                             "(default: the server's own, two sharing the threads for an onnxruntime bundle)")
    parser.add_argument("--routes", default=",".join(ROUTES), help=f"headreg routes to load (default {','.join(ROUTES)})")
    parser.add_argument("--infinity-venv", type=Path, default=Path("/tmp/infinity-venv"),
                        help="a virtualenv with infinity-emb installed (default /tmp/infinity-venv)")
    parser.add_argument("--bf16", action="store_true",
                        help="headreg's bf16 variant (OpenVINO; a CPU with AVX-512 BF16 or AMX) against infinity in bfloat16")
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    parser.add_argument("--rebuild", action="store_true", help="export the bundle again")
    args = parser.parse_args(argv)
    levels = [int(n) for n in args.clients.split(",")]
    routes = [name.strip() for name in args.routes.split(",") if name.strip()]
    args.out.mkdir(parents=True, exist_ok=True)
    bundle = bf16_bundle(args.out, args.rebuild) if args.bf16 else ensure_bundle(args.out, args.rebuild)
    dtype = "bfloat16" if args.bf16 else "float32"
    texts = corpus(max(args.requests, 4 * max(levels)))
    report: dict[str, Any] = {"machine": machine(), "load_average_before": os.getloadavg(), "threads": args.threads, "model_workers": args.model_workers,
                              "dtype": dtype,
                              "requests_per_measurement": args.requests, "rounds": args.rounds, "levels": []}
    print(f"{report['machine']['cpus_available']} CPUs available; load average "
          f"{' '.join(f'{v:.2f}' for v in report['load_average_before'])}", flush=True)
    headreg = Process("headreg serve", [sys.executable, "-m", "headreg.cli", "serve", f"{MODEL}={bundle}",
                                        "--threads", str(args.threads), "--no-access-log",
                                        *(["--model-workers", str(args.model_workers)] if args.model_workers else []),
                                        *(["--variant", "bf16"] if args.bf16 else [])])
    peer = None
    try:
        peer = start_infinity(args.infinity_venv, args.threads, dtype)
        engines: dict[str, tuple[Process, str, Callable[[str], dict[str, Any]]]] = {
            name: (headreg, *ROUTES[name]) for name in routes}
        if peer is not None:
            engines["infinity"] = (peer, *PEER)
        for server, path, body in engines.values():  # warm every route: connections, first-call allocations
            warm = asyncio.run(closed_loop(server.url, 4, texts, 32, args.seconds, path=path, body=body))
            if warm["ok"] != warm["sent"]:
                raise SystemExit(f"{server.name} {path}: {warm['statuses']}")
        for clients in levels:
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in engines}
            for _ in range(args.rounds):
                for name, (server, path, body) in engines.items():
                    cpu = server.cpu_seconds()
                    result = asyncio.run(closed_loop(server.url, clients, texts, max(args.requests, 4 * clients),
                                                     args.seconds, path=path, body=body))
                    # CPU time per request: what a busy shared machine distorts least
                    result["cpu_ms_per_request"] = 1000 * (server.cpu_seconds() - cpu) / max(result["ok"], 1)
                    runs[name].append(result)
            level = summarize(clients, runs)
            report["levels"].append(level)
            print_level(level)
    finally:
        headreg.stop()
        if peer is not None:
            peer.stop()
    report["load_average_after"] = os.getloadavg()
    report["targets"] = targets(report)
    for name, check in report["targets"].items():
        print(f"  {'met    ' if check['met'] else 'NOT MET'} {name}: {check['figure']}")
    print(f"load average before {' '.join(f'{v:.2f}' for v in report['load_average_before'])}, after "
          f"{' '.join(f'{v:.2f}' for v in report['load_average_after'])}; threads {args.threads}")
    written = args.out / f"serve_protocols{'_bf16' if args.bf16 else ''}.json"
    written.write_text(json.dumps(report, indent=2, default=float))
    print(f"wrote {written}")
    return report


def summarize(clients: int, runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The median round per route (by req/s), every round's req/s, and each protocol's req/s over native's."""
    median = {name: sorted(rs, key=lambda r: r["throughput"])[(len(rs) - 1) // 2] for name, rs in runs.items()}
    level: dict[str, Any] = {"clients": clients, "routes": median,
                             "all_rounds": {name: [r["throughput"] for r in rs] for name, rs in runs.items()}}
    if "native" in median:
        native = median["native"]["throughput"]
        level["vs_native"] = {name: run["throughput"] / native for name, run in median.items() if name != "native"}
    if "infinity" in median and "openai" in median:
        level["openai_vs_infinity"] = median["openai"]["throughput"] / median["infinity"]["throughput"]
    return level


def print_level(level: dict[str, Any]) -> None:
    cells = []
    for name, run in level["routes"].items():
        ratio = level.get("vs_native", {}).get(name)
        cells.append(f"{name} {run['throughput']:6.1f} req/s p50/p99 {run['p50_ms']:5.1f}/{run['p99_ms']:6.1f} ms "
                     f"CPU {run['cpu_ms_per_request']:.1f} ms/req" + (f" ({ratio:.2f}x native)" if ratio is not None else ""))
    print(f"{level['clients']:>3} clients | " + " | ".join(cells), flush=True)


def targets(report: dict[str, Any]) -> dict[str, Any]:
    checks: dict[str, Any] = {}
    at32 = next((level for level in report["levels"] if level["clients"] == 32), None)
    if at32 is None:
        return checks
    for name, ratio in at32.get("vs_native", {}).items():
        if name != "infinity":
            checks[f"32 clients: {name} route within 10% of native req/s"] = {
                "ratio": ratio, "met": ratio >= 0.9, "figure": f"{ratio:.2f}x native"}
    if "openai_vs_infinity" in at32:
        ours, theirs = at32["routes"]["openai"], at32["routes"]["infinity"]
        ratio = at32["openai_vs_infinity"]
        checks["32 clients: >= 2.5x infinity-emb's req/s with a lower p99"] = {
            "ratio": ratio, "p99_ms": [ours["p99_ms"], theirs["p99_ms"]],
            "met": ratio >= 2.5 and ours["p99_ms"] < theirs["p99_ms"],
            "figure": f"{ratio:.2f}x, p99 {ours['p99_ms']:.0f} vs {theirs['p99_ms']:.0f} ms"}
    return checks


if __name__ == "__main__":
    main()
