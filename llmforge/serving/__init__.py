"""The OpenAI-compatible server backends."""

from __future__ import annotations

import subprocess


def stop_server(process: subprocess.Popen, timeout: float = 60) -> None:
    """SIGTERM a server process started for a run (it finishes what is in flight), SIGKILL it past `timeout`."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
