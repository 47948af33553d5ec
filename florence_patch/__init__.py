"""florence-patch: make Florence-2 remote code fine-tunable on the transformers you have."""

__version__ = "0.1.0"
