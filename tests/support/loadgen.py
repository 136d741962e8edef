"""A small HTTP/1.1 load generator and server-process helpers for the bench/ scripts.

The generator is its own process (`python -m tests.support.loadgen ...`), pinned with taskset to a
core other than the server's where the machine has two or more, so that the client's CPU does not
come out of the server's: keep-alive connections over raw asyncio streams, a request prepared once
as bytes (a `{seq}` in the body becomes a number unique to the request, for idempotency keys), and
nothing parsed of a response beyond its status line and length. It prints one JSON line:
requests, seconds, requests/s and how many answers were not 2xx.

    python -m tests.support.loadgen --port 8000 --path /graphql --body-file q.json \\
        --header 'Authorization: Bearer ...' --concurrency 16 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- the generator (child process)


def _request(host: str, port: int, method: str, path: str, headers: Sequence[str], body: bytes) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: keep-alive"]
    if body or method == "POST":
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    lines += list(headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    """Read one response; its status code."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = None
    chunked = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if length is not None:
        await reader.readexactly(length)
    elif chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status


async def _generate(args: argparse.Namespace, template: bytes) -> dict[str, Any]:
    numbered = b"{seq}" in template
    fixed = _request(args.host, args.port, args.method, args.path, args.header, template)
    seq = 0
    prefix = f"{os.getpid()}-{time.time_ns()}-"

    def next_request() -> bytes:
        nonlocal seq
        if not numbered:
            return fixed
        seq += 1
        body = template.replace(b"{seq}", (prefix + str(seq)).encode())
        return _request(args.host, args.port, args.method, args.path, args.header, body)

    done = 0
    bad = 0
    ready = 0
    stop_at = 0.0
    started = asyncio.Event()
    all_ready = asyncio.Event()

    async def worker() -> None:
        nonlocal done, bad, ready
        reader, writer = await asyncio.open_connection(args.host, args.port)
        try:
            for _ in range(args.warmup):
                writer.write(next_request())
                await _read_response(reader)
            ready += 1
            if ready == args.concurrency:
                all_ready.set()
            await started.wait()
            while time.perf_counter() < stop_at:
                writer.write(next_request())
                status = await _read_response(reader)
                done += 1
                if not 200 <= status < 300:
                    bad += 1
        finally:
            writer.close()

    tasks = [asyncio.create_task(worker()) for _ in range(args.concurrency)]
    # The clock starts once every connection is open and warm (or one failed: gather raises it below).
    waiting = asyncio.ensure_future(all_ready.wait())
    await asyncio.wait([waiting, *tasks], return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    begin = time.perf_counter()
    stop_at = begin + args.seconds
    started.set()
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - begin
    return {"requests": done, "seconds": elapsed, "rps": done / elapsed if elapsed else 0.0, "non_2xx": bad}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--method", default="POST")
    parser.add_argument("--path", default="/graphql")
    parser.add_argument("--header", action="append", default=[])
    parser.add_argument("--body", default="")
    parser.add_argument("--body-file")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=int, default=2, help="requests per connection before the clock starts")
    args = parser.parse_args(argv)
    template = Path(args.body_file).read_bytes() if args.body_file else args.body.encode("utf-8")
    print(json.dumps(asyncio.run(_generate(args, template))))


# ---------------------------------------------------------------- helpers for the bench scripts (parent process)

#: Cores: the servers on the first, the load generator on the second (when the machine has two).
CORES = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
SERVER_CORE = CORES[0]
LOAD_CORE = CORES[1] if len(CORES) > 1 else CORES[0]


def pinned(command: list[str], core: int) -> list[str]:
    """`command` under taskset on `core` when taskset exists (else as it is)."""
    if len(CORES) > 1 and subprocess.run(["which", "taskset"], capture_output=True).returncode == 0:
        return ["taskset", "-c", str(core), *command]
    return command


def stop_process(process: subprocess.Popen[Any]) -> None:
    """Terminate, then kill what does not exit within 10 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its reaped children (Linux /proc), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def tree_pids(pid: int) -> list[int]:
    """`pid` and its descendants (npx starts node under a shell)."""
    found = [pid]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            found += tree_pids(int(entry.name))
    return found


def tree_cpu_seconds(pid: int) -> float:
    total = 0.0
    for p in tree_pids(pid):
        with contextlib.suppress(OSError):  # a child that ended meanwhile
            total += cpu_seconds(p)
    return total


@dataclass
class Load:
    """One measured target: where to send what."""

    name: str
    port: int
    path: str
    body: str
    headers: list[str] = field(default_factory=list)
    method: str = "POST"
    pid: int | None = None  # the server process whose CPU per request is reported


def run_load(load: Load, *, seconds: float, concurrency: int, tmp: Path) -> dict[str, Any]:
    """One round against `load` from a pinned generator process; adds the server's CPU ms per request."""
    body_file = tmp / f"body-{load.name.replace(' ', '_').replace('/', '_')}.json"
    body_file.write_text(load.body)
    command = [
        sys.executable,
        "-m",
        "tests.support.loadgen",
        "--port",
        str(load.port),
        "--method",
        load.method,
        "--path",
        load.path,
        "--body-file",
        str(body_file),
        "--concurrency",
        str(concurrency),
        "--seconds",
        str(seconds),
    ]
    for header in load.headers:
        command += ["--header", header]
    cpu_before = tree_cpu_seconds(load.pid) if load.pid else 0.0
    done = subprocess.run(pinned(command, LOAD_CORE), capture_output=True, text=True, cwd=ROOT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed for {load.name}: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if load.pid:
        used = tree_cpu_seconds(load.pid) - cpu_before
        result["cpu_ms"] = 1000 * used / max(1, result["requests"])
    return result


def interleaved(
    loads: Sequence[Load],
    *,
    rounds: int,
    seconds: float,
    concurrency: int,
    tmp: Path,
    report: Callable[[str], None] = print,
) -> dict[str, dict[str, float]]:
    """`rounds` rounds, each measuring every load once (the order rotating); medians per load."""
    samples: dict[str, list[dict[str, Any]]] = {load.name: [] for load in loads}
    for r in range(rounds):
        order = list(loads[r % len(loads) :]) + list(loads[: r % len(loads)])
        for load in order:
            result = run_load(load, seconds=seconds, concurrency=concurrency, tmp=tmp)
            samples[load.name].append(result)
            cpu = f", {result['cpu_ms']:.2f} ms CPU/req" if "cpu_ms" in result else ""
            report(f"  round {r + 1} {load.name:<44} {result['rps']:8.1f} req/s{cpu} (non-2xx {result['non_2xx']})")
    medians: dict[str, dict[str, float]] = {}
    for name, results in samples.items():
        medians[name] = {"rps": statistics.median(x["rps"] for x in results)}
        if all("cpu_ms" in x for x in results):
            medians[name]["cpu_ms"] = statistics.median(x["cpu_ms"] for x in results)
        medians[name]["non_2xx"] = sum(x["non_2xx"] for x in results)
    return medians


if __name__ == "__main__":
    main()
