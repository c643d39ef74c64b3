"""The artifact contract: every stage reads artifacts and writes exactly one.

An artifact is a directory whose `artifact.json` manifest is written last. A stage writes its payload into
`OUT.partial/`, writes the manifest there, then renames the directory to `OUT`: a crashed stage never leaves
something that looks finished, and a re-run with the same fingerprint finds its partial work and resumes.

- manifest.py: reading an artifact (`Artifact.open`, `open_artifact` with its kind checked, verify, lineage);
- inputs.py: what a stage reads (`InputRef`, `expand_paths`, `raw_input` for files outside llmforge);
- writing.py: `run_stage`, which writes one under the contract.
"""

from llmforge.artifacts.inputs import EVAL_DATA, InputRef, expand_paths, raw_input
from llmforge.artifacts.manifest import (
    MANIFEST,
    SCHEMA,
    STAGING_MARK,
    STAGING_SUFFIX,
    UNHASHED_DIRS,
    UPDATE,
    Artifact,
    describe_kind,
    open_artifact,
    staging_path,
)
from llmforge.artifacts.writing import StageContext, fingerprint_of, holds, run_stage
from llmforge.files import canonical_hash, sha256_file

__all__ = [
    "EVAL_DATA",
    "MANIFEST", "SCHEMA", "STAGING_MARK", "STAGING_SUFFIX", "UNHASHED_DIRS", "UPDATE", "Artifact", "InputRef",
    "StageContext", "canonical_hash", "describe_kind", "expand_paths", "fingerprint_of", "holds", "open_artifact",
    "raw_input", "run_stage", "sha256_file", "staging_path",
]  # fmt: skip
