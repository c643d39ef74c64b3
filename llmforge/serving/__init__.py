"""The OpenAI-compatible server backends."""
