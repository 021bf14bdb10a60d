"""Runs an example script as two processes on 127.0.0.1 (gloo CPU collectives, 2 CPU devices each), as the
multi-process tests do."""

import pathlib
import socket
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_on_two_processes(script: str, timeout: float = 180) -> list[tuple[int, str]]:
    """``examples/<script>`` started twice with one coordinator; the exit status and output of each."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        coordinator = f"127.0.0.1:{s.getsockname()[1]}"
    commands = [
        [sys.executable, str(ROOT / "examples" / script), "--coordinator", coordinator,
         "--num-processes", "2", "--process-id", str(i), "--cpu-devices", "2"]
        for i in range(2)
    ]  # fmt: skip
    processes = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for c in commands]
    try:
        outputs = [p.communicate(timeout=timeout)[0] for p in processes]
    finally:
        for p in processes:
            p.kill()
    return [(p.returncode, output) for p, output in zip(processes, outputs, strict=True)]
