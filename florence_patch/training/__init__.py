"""Fine-tuning and evaluation of Florence-2 on VQA-style data."""
