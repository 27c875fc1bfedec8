"""How long the README's first command takes to fail on a machine that cannot download the default checkpoint.

Runs `naclip segment examples/coffee.jpg --labels-file examples/labels.txt --out OUT` in a fresh process with an
empty Hugging Face cache, under four conditions, and prints the seconds until it exits next to the 10 s target:

- `machine`: this machine's own network, with the default Hub endpoint (without network: DNS fails);
- `refused`: the Hub endpoint at a loopback port nothing listens on;
- `silent`: the Hub endpoint at a loopback server that accepts connections and never answers (the worst case:
  every request waits for its timeout);
- `offline`: `HF_HUB_OFFLINE=1`.

It also reports whether stderr holds retry lines or a traceback. Only loopback addresses are used besides the
machine's own default endpoint.

    python scripts/offline_first_run.py [--conditions machine refused silent offline]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_SECONDS = 10.0
CONDITIONS = ("machine", "refused", "silent", "offline")


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def silent_server(lifetime: float) -> tuple[socket.socket, int]:
    """A loopback server that accepts connections and never answers, closed after `lifetime` seconds."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []

    def accept() -> None:
        server.settimeout(0.2)
        deadline = time.monotonic() + lifetime
        while time.monotonic() < deadline:
            try:
                connection, _ = server.accept()
                held.append(connection)
            except OSError:
                continue
        for connection in held:
            connection.close()
        server.close()

    threading.Thread(target=accept, daemon=True).start()
    return server, server.getsockname()[1]


def run(condition: str, work: Path) -> tuple[float, int, str]:
    env = {key: value for key, value in os.environ.items()
           if key not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT")}  # fmt: skip
    env["HF_HOME"] = str(work / f"hf-home-{condition}")
    if condition == "refused":
        env["HF_ENDPOINT"] = f"http://127.0.0.1:{closed_port()}"
    elif condition == "silent":
        _, port = silent_server(lifetime=60)
        env["HF_ENDPOINT"] = f"http://127.0.0.1:{port}"
    elif condition == "offline":
        env["HF_HUB_OFFLINE"] = "1"
    command = [sys.executable, "-m", "naclip_hf.cli", "segment", "examples/coffee.jpg", "--labels-file",
               "examples/labels.txt", "--out", str(work / f"out-{condition}")]  # fmt: skip
    start = time.perf_counter()
    completed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    return time.perf_counter() - start, completed.returncode, completed.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conditions", nargs="+", choices=CONDITIONS, default=list(CONDITIONS))
    args = parser.parse_args()
    print(f"| condition | seconds | / {TARGET_SECONDS:g} s target | exit status | retry lines | traceback |")
    print("| --- | ---: | ---: | ---: | --- | --- |")
    with tempfile.TemporaryDirectory() as folder:
        for condition in args.conditions:
            seconds, status, stderr = run(condition, Path(folder))
            retries = "yes" if "Retrying in" in stderr else "no"
            traceback = "yes" if "Traceback" in stderr else "no"
            print(f"| {condition} | {seconds:.1f} | {seconds / TARGET_SECONDS:.2f} | {status} | {retries} | "
                  f"{traceback} |")  # fmt: skip


if __name__ == "__main__":
    main()
