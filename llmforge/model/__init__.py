"""Model building and loading: presets, artifact <-> transformers."""
