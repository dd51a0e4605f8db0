"""The clustering job as plain Python steps, its configuration and its CLI (no Prefect)."""
