"""What the cluster-executor tests (Ray, Slurm) share: a small crawl, the settings they run it with, the local
executor's artifacts of it as the reference, and the check that a cluster made the same artifact."""

from pathlib import Path

from warc_factory import CITY_FILTER_SETTINGS, city_crawl_pages, write_warc

from llmforge.artifacts import Artifact
from llmforge.data.documents import iter_documents

SETTINGS = (
    CITY_FILTER_SETTINGS
    + """\
extract:
  timeout: 30   # not 1 s: a fresh worker's first page, on a busy machine, must not be dropped
"""
)
# MinHash in 4 buckets of 3 hashes instead of 14 of 8 (a bucket is a task, and each cluster task has a start of its
# own, about a second here); a pair at Jaccard 0.8 is still a candidate with probability 0.94
MINHASH = {"buckets": 4, "hashes_per_bucket": 3}
DEDUP = ["--buckets", "4", "--hashes-per-bucket", "3"]


def reference_crawl(root: Path) -> tuple[list, Artifact, Artifact]:
    """2 WARC files: articles (one German), spam, a blocked domain, a page mirrored from file 0 and a near-copy
    of it; the crawl-filter command line for them, and the local executor's crawl-filter and dedup artifacts."""
    import yaml

    from llmforge.stages import crawl_filter, dedup

    for number in range(2):
        write_warc(root / "crawl" / f"CC-MAIN-{number:05d}.warc.gz", city_crawl_pages(number))
    (root / "filter.yaml").write_text(SETTINGS)
    config = crawl_filter.Config.model_validate({**yaml.safe_load(SETTINGS), "executor": {"workers": 1}})
    docs = Artifact.open(crawl_filter.run([str(root / "crawl")], root / "docs", config))
    config = dedup.Config.model_validate({"minhash": MINHASH, "executor": {"workers": 1}})
    deduped = Artifact.open(dedup.run([str(docs.path)], root / "dedup", config=config))
    return ["crawl-filter", root / "crawl", "--config", root / "filter.yaml"], docs, deduped


def assert_same_artifact(artifact: Path, reference: Artifact, executor: str) -> None:
    """The same fingerprint, the same files (the manifest lists each with its hash), the same documents, stats."""
    made = Artifact.open(artifact)
    assert made.fingerprint == reference.fingerprint
    assert made.manifest["files"] == reference.manifest["files"] and made.stats == reference.stats
    assert list(iter_documents(made)) == list(iter_documents(reference))
    assert made.manifest["config"]["executor"]["kind"] == executor and made.verify() == []
