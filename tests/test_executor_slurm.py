"""--executor slurm through datatrove's real Slurm executor, on a stand-in for Slurm: `sbatch` runs the job's array
tasks at once, one after another, with the environment Slurm gives them (SLURM_ARRAY_TASK_ID...), `srun` runs
its command, `scontrol` names one node and `squeue` knows no running job. Everything between is the real path: llmforge builds the executors, datatrove writes the sbatch
script and pickles the executor, each task unpickles it in a fresh process (`launch_pickled_pipeline`, as on a
node), takes its task lock and runs its part; llmforge waits for the completion marks. The artifact is the local
executor's, byte for byte."""

import os
import sys
from pathlib import Path

import pytest
from cluster_crawl import DEDUP, assert_same_artifact, reference_crawl
from helpers import llmforge
from warc_factory import city_crawl_pages, write_warc

pytestmark = pytest.mark.slow

SBATCH = """\
import os, re, subprocess, sys
from pathlib import Path

script = Path(sys.argv[-1]).read_text()
jobs = Path(os.environ["FAKE_SLURM"]) / "jobs.txt"
with jobs.open("a") as handle:
    handle.write(" ".join(sys.argv[1:-1]) + "\\n")
job = str(len(jobs.read_text().splitlines()))
array = re.search(r"^#SBATCH --array=(\\d+)-(\\d+)", script, re.M)
first, last = (int(array[1]), int(array[2])) if array else (0, 0)
output = re.search(r"^#SBATCH --output=(.*)$", script, re.M)
for task in range(first, last + 1) if os.environ.get("FAKE_SLURM_RUNS", "1") == "1" else ():  # 0: cancelled
    env = {**os.environ, "SLURM_JOB_ID": job, "SLURM_ARRAY_JOB_ID": job, "SLURM_ARRAY_TASK_ID": str(task),
           "SLURM_NODELIST": "localhost", "SLURM_NODEID": "0"}
    for argument in sys.argv[1:-1]:  # --export=ALL,RUN_OFFSET=0
        if argument.startswith("--export="):
            env.update(item.split("=", 1) for item in argument.split("=", 1)[1].split(",") if "=" in item)
    log = output[1].replace("%A", job).replace("%a", str(task)) if output else os.devnull
    with open(log, "w") as handle:
        subprocess.run(["bash", "-c", script], env=env, stdout=handle, stderr=subprocess.STDOUT)
print(f"Submitted batch job {job}")
"""
SRUN = """\
import os, sys

args = sys.argv[1:]
while args and args[0].startswith("-"):
    if args.pop(0) in ("-n", "-N", "-c"):
        args.pop(0)
os.execvp(args[0], args)
"""

SCONTROL = """\
import sys

print("localhost")  # scontrol show hostnames NODELIST: one node
"""
SQUEUE = """\
import os, sys

# squeue -h -j JOB: the stand-in's jobs have all ended by the time anyone asks; an ended job is listed as nothing,
# and once the controller has forgotten it (FAKE_SQUEUE_FORGOT=1), its id is refused
if os.environ.get("FAKE_SQUEUE_FORGOT") == "1":
    sys.exit("slurm_load_jobs error: Invalid job id specified")
"""


@pytest.fixture
def fake_slurm(tmp_path):
    """sbatch, srun, scontrol and squeue stand-ins first on PATH; FAKE_SLURM is where sbatch notes the jobs."""
    bin_dir = tmp_path / "slurm-bin"
    bin_dir.mkdir()
    for name, body in (("sbatch", SBATCH), ("srun", SRUN), ("scontrol", SCONTROL), ("squeue", SQUEUE)):
        (bin_dir / name).write_text(f"#!{sys.executable}\n{body}")
        (bin_dir / name).chmod(0o755)
    return {
        "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
        "FAKE_SLURM": str(tmp_path),
    }


def test_crawl_filter_and_dedup_on_slurm_make_the_local_artifacts(fake_slurm, tmp_path):
    filtered, docs, deduped = reference_crawl(tmp_path / "reference")
    slurm = ["--executor", "slurm", "--set", "executor.slurm.partition=cpu", "--set",
             "executor.slurm.poll_seconds=0.2"]  # fmt: skip
    result = llmforge(*filtered, "-o", tmp_path / "docs", *slurm, env=fake_slurm)
    assert result.stdout == f"{tmp_path / 'docs'}\n" and "waiting for Slurm job" in result.stderr
    assert_same_artifact(tmp_path / "docs", docs, "slurm")
    llmforge("dedup", tmp_path / "docs", "-o", tmp_path / "dedup", *DEDUP, *slurm, env=fake_slurm)
    assert_same_artifact(tmp_path / "dedup", deduped, "slurm")
    # each step was one sbatch job (and datatrove's stats-merging job), dedup's later steps after the earlier ones
    jobs = [job for job in (tmp_path / "jobs.txt").read_text().splitlines() if job.startswith("--export")]
    assert len(jobs) == 1 + 6 and all(f"--dependency=afterok:{2 * n + 1}" in jobs[n + 1] for n in range(1, 6))
    # the nodes ran llmforge's executor (pickled by datatrove), each task under its lock, gone once the step ended
    import dill

    with open(tmp_path / "docs" / "logs" / "filter" / "executor.pik", "rb") as handle:
        assert type(dill.load(handle)).__name__ == "SlurmExecutor"
    assert list((tmp_path / "docs" / "logs" / "filter" / "slurm_logs").glob("*.out"))
    assert not list(tmp_path.glob("*/logs/*/task-locks"))


@pytest.mark.parametrize("forgot", ["0", "1"])
def test_a_job_that_ends_with_tasks_unfinished_stops_the_wait(fake_slurm, tmp_path, forgot):
    """The job was cancelled before its tasks ran: squeue lists it as nothing (just ended) or refuses its id (the
    controller forgot it), and llmforge says so instead of waiting for completion marks that never come."""
    for number in range(2):
        write_warc(tmp_path / "crawl" / f"CC-MAIN-{number:05d}.warc.gz", city_crawl_pages(number))
    env = {**fake_slurm, "FAKE_SLURM_RUNS": "0", "FAKE_SQUEUE_FORGOT": forgot}
    result = llmforge("crawl-filter", tmp_path / "crawl", "-o", tmp_path / "docs", "--executor", "slurm",
                      "--set", "executor.slurm.partition=cpu", "--set", "executor.slurm.poll_seconds=0.2",
                      env=env, check=False, timeout=120)  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "Slurm job 1 (filter) ended with 2 tasks unfinished" in " ".join(result.stderr.split())
    assert not (tmp_path / "docs" / "manifest.json").exists()


def test_slurm_without_squeue_is_refused_before_anything_is_written(fake_slurm, tmp_path):
    (tmp_path / "slurm-bin" / "squeue").unlink()
    write_warc(tmp_path / "crawl" / "CC-MAIN-00000.warc.gz", city_crawl_pages(0))
    result = llmforge("crawl-filter", tmp_path / "crawl", "-o", tmp_path / "docs", "--executor", "slurm",
                      "--set", "executor.slurm.partition=cpu", env=fake_slurm, check=False)  # fmt: skip
    assert result.returncode == 2
    assert "--executor slurm needs Slurm's squeue on PATH" in result.stderr
    assert not (tmp_path / "docs").exists() and not (tmp_path / "jobs.txt").exists()
