"""--executor ray on a Ray cluster this module starts on this machine (`ray start --head`, 2 CPUs, token
authentication): crawl-filter and dedup make the artifact the local executor makes, byte for byte; a run killed
midway resumes to it; bad input in a task, a client without the token and a task no node can hold each stop the
command with one line."""

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from cluster_crawl import DEDUP, assert_same_artifact, reference_crawl
from helpers import cli_env, kill_when, llmforge, write_jsonl
from warc_factory import prose

pytest.importorskip("ray")
# one cluster for the module: its tests stay on one pytest worker
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Cluster:
    """A one-node Ray cluster of 2 CPUs (`ray start --head --block`, its process group our own). Its own ports (a
    second cluster on this machine must not collide), its own token, its own short temp dir (Ray's unix sockets
    live there, and their paths are limited to 107 bytes)."""

    def __init__(self):
        self.temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
        self.env = {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": secrets.token_hex(32),
            "RAY_USAGE_STATS_ENABLED": "0",
        }
        command = [Path(sys.executable).with_name("ray"), "start", "--head", "--block", "--port=0",
                   "--num-cpus=2", f"--memory={8 * 2**30}",
                   f"--object-store-memory={100 * 2**20}", f"--temp-dir={self.temp}", "--include-dashboard=false",
                   f"--dashboard-port={free_port()}", f"--ray-client-server-port={free_port()}",
                   "--disable-usage-stats"]  # fmt: skip
        self.log = open(self.temp / "start.log", "w")
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=cli_env(self.env),
                                        start_new_session=True)  # fmt: skip
        self._address = None

    @property
    def address(self) -> str:
        """HOST:PORT, once the cluster is up (it starts while the reference artifacts are made)."""
        file, deadline = self.temp / "ray_current_cluster", time.monotonic() + 120
        while self._address is None:
            if file.is_file() and file.read_text().strip():
                self._address = file.read_text().strip()
                break
            log = (self.temp / "start.log").read_text()[-3000:]
            assert self.process.poll() is None, f"ray start exited:\n{log}"
            assert time.monotonic() < deadline, f"no Ray cluster after 120 s:\n{log}"
            time.sleep(0.2)
        return self._address

    def stop(self) -> None:
        os.killpg(
            self.process.pid, signal.SIGKILL
        )  # Ray's daemons ignore SIGTERM for seconds; none outlives this
        self.process.wait()
        self.log.close()
        shutil.rmtree(self.temp, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_cluster():
    cluster = Cluster()
    try:
        yield cluster
    finally:
        cluster.stop()


def on_ray(command: list, cluster: Cluster) -> tuple[list, dict]:
    """The command with --executor ray and the cluster's address, and the environment with its token."""
    return [*command, "--executor", "ray", "--set", f"executor.ray.address={cluster.address}"], cluster.env


@pytest.fixture(scope="module")
def crawl(tmp_path_factory):
    """The reference crawl and the local executor's artifacts of it (made in this process while the cluster
    starts)."""
    return reference_crawl(tmp_path_factory.mktemp("ray-crawl"))


def test_crawl_filter_on_ray_makes_the_local_artifact(ray_cluster, crawl, tmp_path):
    filtered, docs, _ = crawl
    command, env = on_ray([*filtered, "-o", tmp_path / "docs"], ray_cluster)
    shared_logs = Path(tempfile.gettempdir()) / "ray_logs" / "logs"  # datatrove's, by rank alone
    started = time.time()
    result = llmforge(*command, env=env)
    # each task logged in a directory of its own, its log copied to the artifact's, none in the shared place
    assert [log for log in shared_logs.glob("task_*.log") if log.stat().st_mtime >= started] == []
    task_logs = sorted((tmp_path / "docs" / "logs" / "filter" / "logs").glob("task_*.log"))
    assert len(task_logs) == 2 and all("Processing done for rank" in log.read_text() for log in task_logs)
    assert result.stdout == f"{tmp_path / 'docs'}\n" and "ray: 1 node(s), 2 CPUs" in result.stderr
    # nor datatrove's warning per step (said once, by us), nor Ray's INFO lines, nor the workers' output
    noisy = ("Logging directory", "INFO", "pid=")
    assert [line for line in result.stderr.splitlines() if any(word in line for word in noisy)] == []
    assert_same_artifact(tmp_path / "docs", docs, "ray")
    assert docs.stats["documents"] == 11 and docs.stats["filters"]["url_filter"]["removed"] == 2


def test_dedup_on_ray_killed_midway_resumes_to_the_local_artifact(ray_cluster, crawl, tmp_path):
    """kill -9 the command (the Ray driver) once a MinHash bucket task is done (the fourth of six steps): Ray ends
    the job's tasks with it, and the same command keeps every finished task and makes what the local executor
    makes."""
    _, docs, deduped = crawl
    out = tmp_path / "dedup"
    command, env = on_ray(["dedup", docs.path, "-o", out, *DEDUP], ray_cluster)
    buckets = tmp_path / "dedup.partial" / "logs" / "minhash-buckets" / "completions"
    kill_when(command, lambda: buckets.is_dir() and any(buckets.iterdir()), tmp_path / "kill.log", env)
    assert 1 <= len(list(buckets.iterdir())) < 4 and not (out / "artifact.json").exists()

    resumed = llmforge(*command, env=env)
    assert resumed.stdout == f"{out}\n" and "resuming the interrupted run" in resumed.stderr
    shards = len(list((docs.path / "data").iterdir()))  # a task per shard of the input
    for step, tasks in (
        ("exact-signatures", shards),
        ("exact-duplicates", 1),
        ("minhash-signatures", shards),
    ):
        assert f"resuming dedup {step}: {tasks}/{tasks} tasks already done" in resumed.stderr
    assert re.search(r"resuming dedup minhash-buckets: [123]/4 tasks", resumed.stderr)
    assert "resuming dedup minhash-clusters" not in resumed.stderr
    assert_same_artifact(out, deduped, "ray")
    assert deduped.stats["exact"]["removed"] == 1 and deduped.stats["minhash"]["removed"] == 1


def test_bad_input_in_a_ray_task_stops_with_one_line(ray_cluster, crawl, tmp_path):
    """Bytes flipped in an input shard, its size kept (only reading it can tell): the task on the cluster that
    reads it fails, and the command names the file as on the local executor (exit 2), not only that a task did
    not finish."""
    _, docs, _ = crawl
    damaged = shutil.copytree(docs.path, tmp_path / "docs")
    shard = damaged / "data" / "00001.jsonl.gz"
    content = bytearray(shard.read_bytes())
    content[len(content) // 2 : len(content) // 2 + 16] = bytes(16)
    shard.write_bytes(bytes(content))
    command, env = on_ray(["dedup", damaged, "-o", tmp_path / "out", *DEDUP], ray_cluster)
    result = llmforge(*command, env=env, check=False)
    assert result.returncode == 2 and result.stdout == "", result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: {shard}") and ("corrupt or truncated" in line or "not valid JSON" in line)
    assert not (tmp_path / "out").exists()


def test_a_cluster_that_refuses_the_client_is_named(ray_cluster, tmp_path):
    """A client given an address sends no token unless RAY_AUTH_MODE=token: the error says what to set (one
    connection attempt here instead of Ray's 20)."""
    address = ray_cluster.address
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"text": " ".join(prose(5))}])
    command, _ = on_ray(["dedup", corpus, "-o", tmp_path / "out", *DEDUP], ray_cluster)
    result = llmforge(
        *command, env={"RAY_AUTH_MODE": "disabled", "RAY_NUM_REDIS_GET_RETRIES": "1"}, check=False
    )
    assert result.returncode != 0 and result.stdout == ""
    assert f"error: cannot connect to the Ray cluster at {address}: Failed to connect" in result.stderr
    assert "needs RAY_AUTH_MODE=token and its token" in result.stderr


def test_a_task_no_node_can_hold_is_refused(ray_cluster, tmp_path):
    """Tasks of 4 x 4 GB on a node of 2 CPUs and 8 GB would wait for resources forever: one line, exit 2."""
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"text": " ".join(prose(5))}])
    command, env = on_ray(["dedup", corpus, "-o", tmp_path / "out", *DEDUP], ray_cluster)
    result = llmforge(*command, "--set", "executor.ray.cpus_per_task=4", "--set", "executor.ray.mem_per_cpu_gb=4",
                      env=env, check=False)  # fmt: skip
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == (
        "error: no node of the Ray cluster can hold a task of 4 CPU(s) and 16 GB (the largest has 2 CPUs and 8.0 GB "
        "for tasks); lower --set executor.ray.cpus_per_task or executor.ray.mem_per_cpu_gb"
    )
