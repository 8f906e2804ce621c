"""``headreg serve`` under load, side by side: ``python -m benchmarks.serve [--quick]``.

A closed-loop load generator (httpx + asyncio, 127.0.0.1 only): each client sends one text per request from
the mixed-length real-text corpus (``benchmarks/corpus.py``) and waits for the answer before sending the next.
For 1, 8, 32 and 128 concurrent clients, interleaved round by round (headreg serve, naive server, offline):

- **headreg serve**: ``headreg serve`` with cross-request batching;
- **naive server**: the same ASGI stack, one ``Predictor.predict`` per request in a thread pool
  (``benchmarks/naive_server.py``), what a user writes without ``headreg serve``;
- **offline**: ``Predictor.predict`` over the same texts in this process (no HTTP), the ceiling.

Reported per level: throughput (requests/s; one text each), latency p50/p90/p99, headreg's mean batch size
(from its /metrics) and CPU time per request of each engine; then the overload run: 4x
``--max-concurrent-requests`` clients that retry a 429 after its Retry-After (jittered), which must see no
status but 200 and 429 and lose nothing. Every server and the offline Predictor get the same
``--threads``. Bounded: at most ``--requests`` requests and ``--seconds`` per measurement.

Servers run as subprocesses on free ports; the bundle (real all-MiniLM-L6-v2 with a fresh seq_cls head) is
exported once with ``headreg export`` into ``--out``/bundles and reused. Writes ``serve.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import aiohttp
import httpx

from .corpus import mixed_corpus

ROOT = Path(__file__).resolve().parent
MODEL = "minilm"
# Overload clients retry a 429 after the server's Retry-After, jittered (x0.5-1.5) so they do not return in step.
RETRY_JITTER = (0.5, 1.5)


# --- setup ---------------------------------------------------------------------------------------------------------


def ensure_bundle(out: Path, rebuild: bool) -> Path:
    """The MiniLM seq_cls bundle, exported by the real ``headreg export`` command (once)."""
    bundle = out / "bundles" / "serve-minilm"
    if rebuild or not (bundle / "headreg.json").is_file():
        from headreg.testing import minilm_path

        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "headreg.cli", "export", str(minilm_path()), "--head", "seq_cls", "--num-labels", "2",
             "-o", str(bundle), "--overwrite", "--json"],
            check=True, stdout=subprocess.DEVNULL,
        )
        print(f"exported {bundle} in {time.perf_counter() - started:.0f}s", flush=True)
    return bundle


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Process:
    """A server subprocess on a free port, stopped with SIGTERM."""

    def __init__(self, name: str, command: list[str], cpus: set[int] | None = None, env: dict[str, str] | None = None,
                 start_seconds: float = 120):
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile("w+")
        self.process = subprocess.Popen([*command, "--port", str(self.port)], stdout=subprocess.DEVNULL,
                                        stderr=self.log, text=True, preexec_fn=pin_to(cpus),
                                        env={**os.environ, **env} if env else None)
        deadline = time.monotonic() + start_seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.log.seek(0)
                raise SystemExit(f"{name} exited: {self.log.read()[-2000:]}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            time.sleep(0.1)
        self.stop()
        raise SystemExit(f"{name} did not become healthy in {start_seconds:.0f} s")

    def cpu_seconds(self) -> float:
        """CPU time the server process has used (all its threads, user + system)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()


def machine() -> dict[str, Any]:
    from headreg.runtime.cpus import available_cpus
    from headreg.runtime.variants import machine as variant_machine

    info = variant_machine()
    return {"arch": info["arch"], "isa": info["cpu_flags"], "cpus_available": available_cpus(),
            "python": platform.python_version()}


# --- load ----------------------------------------------------------------------------------------------------------


async def closed_loop(url: str, clients: int, texts: list[str], requests: int, seconds: float,
                      retry_429: bool = False, path: str = f"/v1/models/{MODEL}/predict",
                      body: Callable[[str], dict[str, Any]] = lambda text: {"inputs": [text]}) -> dict[str, Any]:
    """``clients`` clients, each: take the next text, POST it, wait; until ``requests`` were sent or ``seconds`` passed.

    ``path`` and ``body`` (text -> JSON body): the route under load (default: the native predict route).
    """
    latencies: list[float] = []
    statuses: Counter[Any] = Counter()
    answered: Counter[int] = Counter()
    retries = 0
    next_index = 0
    start = time.perf_counter()
    deadline = start + seconds
    # aiohttp, not httpx: the load generator shares the servers' cores, and at 32 clients it cost 0.36 ms of CPU
    # per request against httpx's 2.3 (infinity-emb alone, interleaved: 67.0 vs 57.8 req/s; headreg gains alike)
    connector = aiohttp.TCPConnector(limit=clients)
    headers = {"content-type": "application/json"}
    async with aiohttp.ClientSession(url, connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as client:

        async def send(payload: dict[str, Any]) -> tuple[Any, float]:
            """(final status or the transport error's name, when the answered attempt was sent); retries 429s if asked."""
            nonlocal retries
            data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
            while True:
                sent = time.perf_counter()
                try:
                    async with client.post(path, data=data, headers=headers) as response:
                        await response.read()
                        status, retry_after = response.status, response.headers.get("retry-after", 1)
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:  # counted as an error of its own, never hidden
                    return type(exc).__name__, sent
                if status != 429 or not retry_429:
                    return status, sent
                statuses[429] += 1
                retries += 1
                await asyncio.sleep(float(retry_after) * random.uniform(*RETRY_JITTER))

        async def one_client() -> None:
            nonlocal next_index
            while next_index < requests and time.perf_counter() < deadline:
                index = next_index
                next_index += 1
                status, sent = await send(body(texts[index % len(texts)]))
                statuses[status] += 1
                if status == 200:
                    latencies.append(time.perf_counter() - sent)
                    answered[index] += 1

        await asyncio.gather(*(one_client() for _ in range(clients)))
    elapsed = time.perf_counter() - start
    return {
        "clients": clients, "sent": next_index, "ok": len(latencies), "seconds": elapsed,
        "throughput": len(latencies) / elapsed, "statuses": dict(statuses), "retries": retries,
        "lost": next_index - len(answered), "answered_twice": sum(1 for n in answered.values() if n > 1),
        **percentiles(latencies),
    }


def percentiles(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {"p50_ms": float("nan"), "p90_ms": float("nan"), "p99_ms": float("nan")}
    ordered = sorted(seconds)

    def at(q: float) -> float:
        return 1000 * ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]

    return {"p50_ms": at(0.5), "p90_ms": at(0.9), "p99_ms": at(0.99)}


def batch_stats(url: str) -> tuple[float, float]:
    """(batches, rows) the headreg server has run so far, from its Prometheus metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    batches = rows = 0.0
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text):
        for sample in family.samples:
            if sample.name == "headreg_batch_size_count":
                batches += sample.value
            elif sample.name == "headreg_batch_size_sum":
                rows += sample.value
    return batches, rows


def corpus(requests: int) -> list[str]:
    return mixed_corpus(max(requests, 512), seed=7)  # the same texts in every process for the same count


def pin_to(cpus: set[int] | None):
    """A preexec_fn putting a child process (and so every thread it starts) on ``cpus``."""
    return (lambda: os.sched_setaffinity(0, cpus)) if cpus else None


def run_offline(bundle: Path, args: argparse.Namespace, requests: int, cpus: set[int] | None,
                direct: bool = False) -> dict[str, Any]:
    """Offline ``Predictor.predict`` (and with ``direct``, one-text calls) in a fresh process on the servers' CPUs."""
    spec = {"bundle": str(bundle), "threads": args.threads, "requests": requests, "direct": direct,
            "max_batch_tokens": args.max_batch_tokens, "batch_size": args.max_batch_size}
    done = subprocess.run(
        [sys.executable, "-c", "import json, sys; from benchmarks.serve import offline_worker; "
         "print(json.dumps(offline_worker(json.loads(sys.argv[1]))))", json.dumps(spec)],
        capture_output=True, text=True, check=True, preexec_fn=pin_to(cpus), timeout=600,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def offline_worker(spec: dict[str, Any]) -> dict[str, Any]:
    from headreg.runtime import Predictor

    predictor = Predictor(spec["bundle"], threads=spec["threads"], max_batch_tokens=spec["max_batch_tokens"],
                          batch_size=spec["batch_size"])
    texts = corpus(spec["requests"])
    predictor.predict(texts[:32])  # warm
    result = {"offline": offline(predictor, texts[: spec["requests"]])}
    if spec["direct"]:
        result["direct"] = direct_single(predictor, texts[:64])
    return result


def offline(predictor: Any, texts: list[str]) -> dict[str, Any]:
    started, cpu = time.perf_counter(), time.process_time()
    predictor.predict(texts)
    elapsed = time.perf_counter() - started
    cpu_ms = 1000 * (time.process_time() - cpu) / len(texts)
    return {"throughput": len(texts) / elapsed, "seconds": elapsed, "cpu_ms_per_request": cpu_ms}


def direct_single(predictor: Any, texts: list[str]) -> dict[str, float]:
    """Latency of ``Predictor.predict([text])`` one text at a time: what a 1-client server is measured against."""
    seconds = []
    for text in texts:
        started = time.perf_counter()
        predictor.predict([text])
        seconds.append(time.perf_counter() - started)
    return percentiles(seconds)


# --- the run -------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests and one round (about 2 minutes)")
    parser.add_argument("--clients", default="1,8,32,128", help="concurrent client counts (default 1,8,32,128)")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime threads for every engine (default 2)")
    parser.add_argument("--requests", type=int, default=None, help="requests per measurement (default 512, --quick 192)")
    parser.add_argument("--seconds", type=float, default=30.0, help="time cap per measurement (default 30)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds per client count (default 2, --quick 1)")
    parser.add_argument("--max-batch-tokens", type=int, default=2048)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--overload-limit", type=int, default=32,
                        help="--max-concurrent-requests of the overload run; it sends 4x as many clients")
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    parser.add_argument("--rebuild", action="store_true", help="export the bundle again")
    parser.add_argument("--bundle", type=Path, default=None, help="serve this seq_cls bundle instead of exporting MiniLM")
    parser.add_argument("--pin", action="store_true",
                        help="servers and the offline Predictor on CPUs 0..threads-1, the load generator on the rest "
                        "(a machine with spare cores: every engine gets exactly --threads cores)")
    args = parser.parse_args(argv)
    requests = args.requests or (192 if args.quick else 512)
    rounds = args.rounds or (1 if args.quick else 2)
    levels = [int(n) for n in args.clients.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    bundle = args.bundle or ensure_bundle(args.out, args.rebuild)
    texts = corpus(max(requests, 4 * max(levels)))
    cpus = None
    if args.pin:
        every = sorted(os.sched_getaffinity(0))
        if len(every) <= args.threads:
            parser.error(f"--pin needs more than {args.threads} CPUs; this process has {len(every)}")
        cpus = set(every[: args.threads])
        os.sched_setaffinity(0, set(every[args.threads:]))
    report: dict[str, Any] = {
        "machine": machine(), "load_average_before": os.getloadavg(), "threads": args.threads,
        "requests_per_measurement": requests, "rounds": rounds, "max_batch_tokens": args.max_batch_tokens,
        "max_batch_size": args.max_batch_size, "server_cpus": sorted(cpus) if cpus else None, "levels": [],
    }
    print(f"CPU: {report['machine']['arch']}; ISA: {' '.join(report['machine']['isa']) or 'no AVX2/AVX-512/AMX'}; "
          f"{report['machine']['cpus_available']} CPUs available; load average {_load(report['load_average_before'])}",
          flush=True)
    serve_command = [sys.executable, "-m", "headreg.cli", "serve", f"{MODEL}={bundle}", "--threads", str(args.threads),
                     "--max-batch-tokens", str(args.max_batch_tokens), "--max-batch-size", str(args.max_batch_size),
                     "--no-access-log"]
    servers = [
        Process("headreg serve", serve_command, cpus),
        Process("naive server", [sys.executable, "-m", "benchmarks.naive_server", str(bundle),
                                 "--threads", str(args.threads)], cpus),
    ]
    try:
        for server in servers:  # warm both: connections, first-call allocations
            asyncio.run(closed_loop(server.url, 4, texts, 32, args.seconds))
        report["direct_single"] = run_offline(bundle, args, requests, cpus, direct=True)["direct"]
        for clients in levels:
            level: dict[str, Any] = {"clients": clients, "headreg": [], "naive": [], "offline": [], "mean_batch_size": []}
            for _ in range(rounds):
                for key, server in zip(("headreg", "naive"), servers):
                    before = batch_stats(server.url) if key == "headreg" else None
                    cpu = server.cpu_seconds()
                    # At least 4 requests per client, so the first wave and the drain do not dominate.
                    result = asyncio.run(closed_loop(server.url, clients, texts, max(requests, 4 * clients), args.seconds))
                    result["cpu_ms_per_request"] = 1000 * (server.cpu_seconds() - cpu) / max(result["ok"], 1)
                    if before is not None:
                        after = batch_stats(server.url)
                        level["mean_batch_size"].append((after[1] - before[1]) / max(after[0] - before[0], 1))
                    level[key].append(result)
                level["offline"].append(run_offline(bundle, args, max(requests, 4 * clients), cpus)["offline"])
            report["levels"].append(summarize_level(level))
            print_level(report["levels"][-1], flush=True)
    finally:
        for server in servers:
            server.stop()
    report["overload"] = overload(serve_command, args, texts, requests, cpus)
    report["load_average_after"] = os.getloadavg()
    report["targets"] = targets(report)
    print_summary(report)
    (args.out / "serve.json").write_text(json.dumps(report, indent=2, default=float))
    print(f"wrote {args.out / 'serve.json'}")
    return report


def summarize_level(level: dict[str, Any]) -> dict[str, Any]:
    """The median round per engine (by throughput), so one disturbed round does not decide the ratio."""

    def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
        ordered = sorted(runs, key=lambda r: r["throughput"])
        return ordered[(len(ordered) - 1) // 2]

    headreg, naive, offline_run = median_run(level["headreg"]), median_run(level["naive"]), median_run(level["offline"])
    return {
        "clients": level["clients"], "headreg": headreg, "naive": naive, "offline": offline_run,
        "mean_batch_size": statistics.median(level["mean_batch_size"]) if level["mean_batch_size"] else None,
        "vs_naive": headreg["throughput"] / naive["throughput"],
        "vs_offline": headreg["throughput"] / offline_run["throughput"],
        # CPU time per request: what a busy shared machine cannot distort (wall-clock throughput there depends
        # on how many threads each engine keeps runnable, not only on the work it does).
        "cpu_vs_naive": naive["cpu_ms_per_request"] / headreg["cpu_ms_per_request"],
        "cpu_vs_offline": offline_run["cpu_ms_per_request"] / headreg["cpu_ms_per_request"],
        "all_rounds": {k: [r["throughput"] for r in level[k]] for k in ("headreg", "naive", "offline")},
    }


def overload(serve_command: list[str], args: argparse.Namespace, texts: list[str], requests: int,
             cpus: set[int] | None) -> dict[str, Any]:
    limit = args.overload_limit
    server = Process("headreg serve (overload)", [*serve_command, "--max-concurrent-requests", str(limit)], cpus)
    try:
        asyncio.run(closed_loop(server.url, 4, texts, 32, args.seconds))
        result = asyncio.run(closed_loop(server.url, 4 * limit, texts, 2 * requests, 2 * args.seconds, retry_429=True))
    finally:
        server.stop()
    result["limit"] = limit
    other = {status: n for status, n in result["statuses"].items() if status not in (200, 429)}
    print(
        f"\noverload: {4 * limit} clients against --max-concurrent-requests {limit}: {result['ok']}/{result['sent']} "
        f"answered 200, {result['retries']} answers 429 (retried), other statuses: {other or 'none'}, "
        f"lost: {result['lost']}, answered twice: {result['answered_twice']}; accepted p50/p99 "
        f"{result['p50_ms']:.0f}/{result['p99_ms']:.0f} ms, {result['throughput']:.0f} req/s", flush=True,
    )
    return result


def targets(report: dict[str, Any]) -> dict[str, Any]:
    checks: dict[str, Any] = {}
    by_clients = {level["clients"]: level for level in report["levels"]}
    if 32 in by_clients:
        level = by_clients[32]
        checks["32 clients: >= 2.5x naive"] = {"ratio": level["vs_naive"], "met": level["vs_naive"] >= 2.5,
                                               "cpu_ratio": level["cpu_vs_naive"]}
        checks["32 clients: >= 75% of offline"] = {"ratio": level["vs_offline"], "met": level["vs_offline"] >= 0.75,
                                                   "cpu_ratio": level["cpu_vs_offline"]}
    if 1 in by_clients:
        ratio = by_clients[1]["headreg"]["p50_ms"] / report["direct_single"]["p50_ms"]
        checks["1 client: p50 <= 1.3x direct predict of one text"] = {"ratio": ratio, "met": ratio <= 1.3}
    over = report.get("overload")
    if over:
        clean = set(over["statuses"]) <= {200, 429} and over["lost"] == 0 and over["answered_twice"] == 0
        checks["4x capacity: only 429s, nothing lost"] = {"p99_ms": over["p99_ms"], "met": clean}
    return checks


def _load(values: Any) -> str:
    return " ".join(f"{v:.2f}" for v in values)


def print_level(level: dict[str, Any], flush: bool = True) -> None:
    h, n, o = level["headreg"], level["naive"], level["offline"]
    batch = f"{level['mean_batch_size']:.1f}" if level["mean_batch_size"] is not None else "-"
    print(
        f"{level['clients']:>4} clients | headreg {h['throughput']:7.1f} req/s p50/p90/p99 {h['p50_ms']:6.1f}/"
        f"{h['p90_ms']:6.1f}/{h['p99_ms']:6.1f} ms batch {batch:>5} | naive {n['throughput']:7.1f} req/s p50/p99 "
        f"{n['p50_ms']:6.1f}/{n['p99_ms']:6.1f} ms | offline {o['throughput']:7.1f} texts/s | "
        f"{level['vs_naive']:.2f}x naive, {level['vs_offline']:.0%} of offline | CPU ms/request headreg "
        f"{h['cpu_ms_per_request']:.1f}, naive {n['cpu_ms_per_request']:.1f}, offline {o['cpu_ms_per_request']:.1f}",
        flush=flush,
    )


def print_summary(report: dict[str, Any]) -> None:
    direct = report["direct_single"]
    print(f"\ndirect Predictor.predict of one text: p50 {direct['p50_ms']:.1f} ms, p99 {direct['p99_ms']:.1f} ms")
    for name, check in report["targets"].items():
        figure = f"{check['ratio']:.2f}" if "ratio" in check else f"p99 {check['p99_ms']:.0f} ms"
        if "cpu_ratio" in check:
            figure += f" (by CPU time per request: {check['cpu_ratio']:.2f})"
        print(f"  {'met    ' if check['met'] else 'NOT MET'} {name}: {figure}")
    print(f"load average before {_load(report['load_average_before'])}, after {_load(report['load_average_after'])}; "
          f"threads {report['threads']}; ISA {' '.join(report['machine']['isa'])}")


if __name__ == "__main__":
    main()
