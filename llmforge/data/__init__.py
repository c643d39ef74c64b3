"""Shared data pieces: documents, token shards, the tokenizer."""
