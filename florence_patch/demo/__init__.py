"""The offline demo: a tiny Florence-2-shaped checkpoint, synthetic DocVQA pages, the whole loop."""
