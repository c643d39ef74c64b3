"""The checkpoint rule (llmforge.train.checkpoint): complete.json is written last and lists every file of its
checkpoint with its sha256; a resume refuses a checkpoint whose files are not exactly those (issue 16: resume
state is loaded with pickle)."""

import json

import pytest

from llmforge.errors import InputError
from llmforge.train import checkpoint as ckpt


@pytest.fixture
def checkpoints(tmp_path):
    """Two checkpoints as pretrain writes them: pickled state (torch.save), a nested folder, complete.json last."""
    import torch

    for step in (1, 2):
        path = tmp_path / ckpt.tag(step)
        (path / "global_step").mkdir(parents=True)
        torch.save(
            {"step": step, "weights": torch.ones(4) * step},
            path / "global_step" / "mp_rank_00_model_states.pt",
        )
        torch.save(ckpt.rng_state(), path / "rng-rank0.pt")
        ckpt.mark_complete(path, {"step": step})
    return tmp_path


def test_complete_lists_every_file_and_an_untouched_checkpoint_verifies(checkpoints):
    path, info = ckpt.verified_latest(checkpoints)
    assert path.name == ckpt.tag(2) and info["step"] == 2
    assert sorted(info["files"]) == ["global_step/mp_rank_00_model_states.pt", "rng-rank0.pt"]
    assert all(len(digest) == 64 for digest in info["files"].values())


def rewrite(path, info) -> None:
    (path / ckpt.COMPLETE).write_text(json.dumps(info))


@pytest.mark.parametrize("tamper, problem", [
    (lambda p, i: (p / "rng-rank0.pt").write_bytes(b"swapped"), "rng-rank0.pt: changed since the checkpoint"),
    (lambda p, i: (p / "global_step" / "zero_pp_rank_1_optim_states.pt").write_bytes(b"x"),
     "zero_pp_rank_1_optim_states.pt: a file its complete.json does not list"),
    (lambda p, i: (p / "rng-rank0.pt").unlink(), "rng-rank0.pt is listed in its complete.json but missing"),
    (lambda p, i: ((p / "rng-rank0.pt").unlink(), (p / "rng-rank0.pt").symlink_to("/dev/zero")),
     "rng-rank0.pt: a symlink in a checkpoint"),
    (lambda p, i: rewrite(p, {"step": 2}), "lists no file hashes"),
    (lambda p, i: rewrite(p, {**i, "files": {**i["files"], "../../outside.pt": "0" * 64}}),
     "../../outside.pt is listed in its complete.json but missing"),
])  # fmt: skip
def test_a_checkpoint_whose_files_are_not_the_listed_ones_is_refused(checkpoints, tamper, problem):
    path, info = ckpt.latest(checkpoints)
    tamper(path, info)
    with pytest.raises(InputError, match="not resumed from") as error:
        ckpt.verified_latest(checkpoints)
    assert problem in str(error.value) and str(path) in str(error.value)
    ckpt.verify(*ckpt.complete_checkpoints(checkpoints)[0])  # the other checkpoint is untouched
