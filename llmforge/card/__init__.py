"""Data and model cards generated from lineage: which raw data, what each filter removed, dedup and
decontamination, the tokenizer and the mixture, the training chain with its settings and final losses, eval scores.

Every figure comes from a manifest (or a model's own config.json and safetensors header); nothing is re-measured,
so a card is exactly as true as the artifacts it describes. Stats are read by the keys each stage declares next to
the code that writes them (`card.stats`). Cards are Markdown that open with the YAML front matter the Hugging Face
Hub reads (`front_matter`: huggingface_hub's ModelCardData with model-index eval results, DatasetCardData).

Modules: `data_card` and `model_card` write the two cards, `training` the rows of each training stage,
`evaluation` the scores, `front_matter` the Hub metadata, `lineage` walks artifacts, `markdown` writes the text, `stages` and `stats` hold what
the card knows about the stages and their stats.
"""

from __future__ import annotations

from pathlib import Path

from llmforge.artifacts import Artifact, describe_kind
from llmforge.card.data_card import data_card
from llmforge.card.front_matter import dataset_card_data, with_front_matter
from llmforge.card.lineage import data_lineage
from llmforge.card.markdown import Markdown
from llmforge.card.model_card import model_card
from llmforge.errors import InputError
from llmforge.registry import DATA_KINDS, MODEL_KINDS


def make_card(path: str | Path, evals: list[str | Path] | None = None, license: str | None = None) -> str:
    """The Markdown card of the artifact at `path`: a data card or a model card, by its kind."""
    artifact = Artifact.open(path)
    if artifact.kind in DATA_KINDS:
        if evals:
            raise InputError(f"--eval is for model cards; {path} is {describe_kind(artifact.kind)}")
        from huggingface_hub import DatasetCard

        writer = Markdown()
        data_card(writer, artifact, level=1)
        return with_front_matter(dataset_card_data(artifact, data_lineage(artifact), license), writer.text(),
                                 DatasetCard)  # fmt: skip
    if artifact.kind in (*MODEL_KINDS, "gguf", "reward-model"):
        return model_card(artifact, evals, license)
    raise InputError(
        f"{path} is {describe_kind(artifact.kind)}; cards describe data (documents, tokenizer, tokens) and models "
        "(model, adapter, quantized-model, gguf, reward-model)"
        + (": give an eval report to its model's card with --eval" if artifact.kind == "eval-report" else "")
    )
