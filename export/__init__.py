"""export: samples, metrics, plots, the model card and a generator for inference (no Prefect)."""
