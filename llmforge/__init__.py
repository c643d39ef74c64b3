"""llmforge: from a raw web crawl to a served language model, one artifact at a time."""

__version__ = "0.1.0"
