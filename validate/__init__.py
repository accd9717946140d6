"""validate: dataset checks, quarantine with reasons, frozen dataset snapshots, takedown (no Prefect)."""
