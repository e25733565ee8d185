"""Serving throughput and latency: modelyard's Ray Serve app (default proxy, HAProxy ingress) against the plain
FastAPI + uvicorn server a user would write (bench/plain_server.py), same model, same client, same images.

    python -m bench.serve [--duration 15] [--concurrency 1 8 32] [--rounds 1]
                          [--targets plain proxy haproxy proxy+onnx haproxy+onnx] [--tracking-uri URI --model NAME]
                          [--data-dir data]

A target is the plain server, or modelyard's app as <ingress>[+onnx][+nolog]: Ray's `proxy` or `haproxy`, with
the torch backend or (+onnx) the onnxruntime one running the version's ONNX export, recording every request in
the traffic log (the default) or not (+nolog). With both X and X+nolog measured it prints what the log costs.

Without --tracking-uri it trains the default image recipe's model (`fashion-cnn`, one epoch on 6,000 images:
the speed of a forward pass does not depend on how well it was trained) into a temporary MLflow store, its
outputs in a temporary directory (raw downloads shared from <data-dir>/raw). The
servers run one at a time, each alone on the machine with the client; the client is one asyncio process
that keeps `concurrency` requests in flight for `duration` seconds after a 2 s warm-up, posting real
Fashion-MNIST test images as PNG. Prints requests/s, p50 and p99 per target and concurrency, and ratios
against the plain server measured in the same run. With `--rounds N` every target is measured N times, the
order of the targets reversed each round (whichever server runs first on a cold machine is slower), and the
medians are reported, with the traffic log's cost round by round.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


# ---- the servers ---------------------------------------------------------------------------------------

def serve_child(args: argparse.Namespace) -> None:
    """In a child process: a local Ray with the chosen ingress, the task deployed, until stdin closes."""
    if args.ingress == "haproxy":
        os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "1"  # read where Ray starts, i.e. here
    from modelyard.config import RegistryConfig, ServeConfig
    from modelyard.runtime import configure_environment

    configure_environment()
    from serving.deploy import deploy

    serve_cfg = ServeConfig(port=args.port, ingress=args.ingress, follow_aliases_s=0, backend=args.backend,
                            traffic_log={"enabled": bool(args.traffic_dir), "dir": args.traffic_dir or "unused"})
    served = deploy(serve_cfg, RegistryConfig(tracking_uri=args.tracking_uri), model_name=args.model,
                    tracking_uri=args.tracking_uri)
    print(json.dumps(served), flush=True)
    sys.stdin.read()


def start_server(target: str, port: int, tracking_uri: str, model: str, model_dir: Path,
                 traffic_dir: Path) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if target == "plain":
        cmd = [sys.executable, "-m", "bench.plain_server", "--model-dir", str(model_dir), "--port", str(port)]
        url = f"http://127.0.0.1:{port}/predict"
    else:
        ingress, *options = target.split("+")
        cmd = [sys.executable, "-m", "bench.serve", "--serve-child", "--ingress", ingress, "--port", str(port),
               "--tracking-uri", tracking_uri, "--model", model,
               "--backend", "onnxruntime" if "onnx" in options else "torch",
               "--traffic-dir", "" if "nolog" in options else str(traffic_dir / target)]
        url = f"http://127.0.0.1:{port}/{model}/predict"
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    return proc, url


def stop_server(proc: subprocess.Popen) -> None:
    try:
        proc.stdin.close()
        proc.wait(timeout=60)
    except (subprocess.TimeoutExpired, OSError):
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# ---- the client ----------------------------------------------------------------------------------------

async def load(url: str, images: list[bytes], concurrency: int, duration_s: float) -> dict:
    import aiohttp

    latencies: list[float] = []
    errors = 0

    async def worker(session, record: bool, stop_at: float, offset: int) -> None:
        nonlocal errors
        i = offset
        while time.perf_counter() < stop_at:
            form = aiohttp.FormData()
            form.add_field("file", images[i % len(images)], filename="x.png", content_type="image/png")
            i += 1
            start = time.perf_counter()
            try:
                async with session.post(url, data=form) as resp:
                    await resp.read()
                    ok = resp.status == 200
            except aiohttp.ClientError:
                ok = False
            if record and ok:
                latencies.append(time.perf_counter() - start)
            elif record:
                errors += 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        warm_until = time.perf_counter() + 2.0
        await asyncio.gather(*(worker(session, False, warm_until, k) for k in range(concurrency)))
        start = time.perf_counter()
        await asyncio.gather(*(worker(session, True, start + duration_s, k * 7) for k in range(concurrency)))
        elapsed = time.perf_counter() - start
    latencies.sort()
    n = len(latencies)
    return {"rps": n / elapsed, "p50_ms": latencies[n // 2] * 1e3 if n else float("nan"),
            "p99_ms": latencies[min(n - 1, int(n * 0.99))] * 1e3 if n else float("nan"), "n": n, "errors": errors}


def wait_ready(url: str, proc: subprocess.Popen, image: bytes, timeout_s: float = 240) -> None:
    import requests

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server for {url} exited with {proc.returncode}")
        try:
            if requests.post(url, files={"file": ("x.png", image, "image/png")}, timeout=5).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    raise TimeoutError(f"{url} not answering after {timeout_s:.0f} s")


# ---- setup ---------------------------------------------------------------------------------------------

def bench_config(data_dir: Path, overrides: dict | None = None):
    """The default image recipe (`fashion-cnn`) over params.yaml, its data under `data_dir`."""
    from modelyard.config import deep_merge, load_config

    base = {"recipe": "fashion-cnn", "paths": {"data_dir": str(data_dir.resolve())}}
    return load_config(REPO / "params.yaml", deep_merge(base, overrides or {}))


def test_pngs(data_dir: Path, count: int = 256) -> list[bytes]:
    """Real Fashion-MNIST test images, PNG-encoded, fetched by the project's own code when missing."""
    from PIL import Image

    from modelyard.data.dataset import load_split
    from modelyard.data.fetch import fetch_dataset
    from modelyard.paths import TaskPaths

    cfg = bench_config(data_dir)
    paths = TaskPaths.of(cfg)
    fetch_dataset(cfg.data, paths.dataset_dir, paths.raw_dir, local_dir=cfg.paths.local_source_dir)
    split = load_split(paths.dataset_dir, "test")
    out = []
    for image in split.images[:count]:
        buf = io.BytesIO()
        Image.fromarray(image.squeeze()).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def train_quick_model(workdir: Path, data_dir: Path) -> tuple[str, str]:
    """The default recipe's architecture, briefly trained, registered as champion in a store under workdir."""
    from modelyard.paths import TaskPaths

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    raw_root = TaskPaths.of(bench_config(data_dir)).raw_root.resolve()  # shared downloads; its own 6,000 cut
    overrides = {
        "data": {"train_limit": 6000},
        "train": {"epochs": 1},
        "registry": {"tracking_uri": uri, "experiment": "bench-serve"},
        "paths": {"data_dir": str(workdir / "data"), "raw_dir": str(raw_root),
                  "artifacts_dir": str(workdir / "artifacts")},
    }
    cfg = bench_config(data_dir, overrides)
    params = workdir / "params.yaml"
    import yaml

    params.write_text(yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True)))
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    subprocess.run([sys.executable, "-m", "modelyard.cli", "pipeline", "-p", str(params)], cwd=REPO, env=env,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return uri, cfg.task_name


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    targets = ["plain", "proxy", "haproxy", "proxy+onnx", "haproxy+onnx"]
    parser.add_argument("--targets", nargs="+", default=[*targets, "haproxy+onnx+nolog"],
                        choices=[*targets, *(f"{t}+nolog" for t in targets[1:])])
    parser.add_argument("--tracking-uri")
    parser.add_argument("--model")
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--rounds", type=int, default=1, help="measure every target this many times, alternating "
                                                              "their order; report the medians")
    parser.add_argument("--data-dir", type=Path, default=REPO / "data",
                        help="where the test images (and the raw downloads) are, fetched when missing")
    parser.add_argument("--serve-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ingress", default="proxy", help=argparse.SUPPRESS)
    parser.add_argument("--backend", default="torch", help=argparse.SUPPRESS)
    parser.add_argument("--traffic-dir", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_child:
        return serve_child(args)

    from modelyard.registry.versions import download_model_dir
    from modelyard.runtime import configure_environment

    configure_environment()
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        workdir = Path(tmp)
        if args.tracking_uri and args.model:
            uri, model = args.tracking_uri, args.model
        else:
            print("training the default recipe's model briefly (1 epoch, 6,000 images) to serve ...", flush=True)
            uri, model = train_quick_model(workdir, args.data_dir)
        model_dir, mv = download_model_dir(uri, model, dst_dir=workdir / "model", alias="champion")
        images = test_pngs(args.data_dir)
        print(f"{model} v{mv.version}; {len(images)} real test PNGs; {os.cpu_count()} cores ({cpu_name()}); "
              f"{args.duration:.0f} s per point\n", flush=True)
        rounds: dict[str, dict[int, list[dict]]] = {t: {c: [] for c in args.concurrency} for t in args.targets}
        for n in range(args.rounds):
            for target in args.targets if n % 2 == 0 else reversed(args.targets):
                proc, url = start_server(target, args.port, uri, model, model_dir, workdir / "traffic")
                try:
                    wait_ready(url, proc, images[0])
                    for c in args.concurrency:
                        r = asyncio.run(load(url, images, c, args.duration))
                        rounds[target][c].append(r)
                        print(f"round {n + 1} {target:12s} c={c:<3d} {r['rps']:7.1f} req/s  p50 {r['p50_ms']:7.1f} ms  "
                              f"p99 {r['p99_ms']:7.1f} ms  errors {r['errors']}", flush=True)
                finally:
                    stop_server(proc)
        results = {t: {c: median_of(rs) for c, rs in by_c.items()} for t, by_c in rounds.items()}
        if args.rounds > 1:
            log_cost_by_round(rounds, args.concurrency)
        report(results, args.concurrency)


def median_of(runs: list[dict]) -> dict:
    """Each figure's median over the rounds."""
    import statistics

    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def log_cost_by_round(rounds: dict[str, dict[int, list[dict]]], levels: list[int]) -> None:
    for target, by_c in rounds.items():
        if target.endswith("+nolog") and target.removesuffix("+nolog") in rounds:
            logged = rounds[target.removesuffix("+nolog")]
            for c in levels:
                ratios = [a["rps"] / b["rps"] for a, b in zip(logged[c], by_c[c])]
                print(f"traffic log, {target.removesuffix('+nolog')} c={c}: req/s with/without per round "
                      f"{', '.join(f'{x:.3f}' for x in ratios)}")


def report(results: dict[str, dict[int, dict]], levels: list[int]) -> None:
    base = results.get("plain")
    print("\n| server | concurrency | req/s | p50 ms | p99 ms | p99/p50 | errors | req/s vs plain | p50 - plain p50 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for target, by_c in results.items():
        for c in levels:
            r = by_c[c]
            vs = f"{r['rps'] / base[c]['rps']:.2f}x" if base else "-"
            dp50 = f"{r['p50_ms'] - base[c]['p50_ms']:+.1f} ms" if base else "-"
            print(f"| {target} | {c} | {r['rps']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                  f"{r['p99_ms'] / r['p50_ms']:.1f} | {r['errors']} | {vs} | {dp50} |")
    for target, by_c in results.items():
        if target.endswith("+nolog") and target.removesuffix("+nolog") in results:
            logged = results[target.removesuffix("+nolog")]
            for c in levels:
                print(f"traffic log cost, {target.removesuffix('+nolog')} at concurrency {c}: req/s "
                      f"{logged[c]['rps'] / by_c[c]['rps']:.3f}x of no log, p50 {logged[c]['p50_ms'] - by_c[c]['p50_ms']:+.2f} ms "
                      f"(goal: at most 5% fewer req/s)")


if __name__ == "__main__":
    main()
