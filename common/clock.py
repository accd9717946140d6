"""The one format for time stamps in manifests, run records and reports: UTC, ISO 8601, seconds."""

from datetime import UTC, datetime


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
