"""DiffMAS: multi-agent LLM systems that communicate through (trainable) latent KV-cache state."""

__version__ = "0.1.0"
