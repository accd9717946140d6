"""What every stage returns, and the two kinds of failure the flows tell apart."""

from dataclasses import dataclass, field


class BadInputError(Exception):
    """Bad input or bad config: retrying cannot help, so the pipeline fails at once.

    The message names the problem and the fix, e.g.
    "faces.toml [train] batch_size = 0: must be at least 1; set a positive batch size".
    """


class TransientError(Exception):
    """A failure that may pass (network, a busy host, a killed worker): the task is retried."""


@dataclass
class StageReport:
    stage: str
    counts: dict[str, int] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)  # label -> path on disk
    notes: list[str] = field(default_factory=list)
    tables: dict[str, list[dict]] = field(default_factory=dict)  # name -> rows, shown as table artifacts
    seconds: float = 0.0
    skipped: bool = False  # True when the inputs were unchanged and nothing was redone

    def markdown(self) -> str:
        lines = [f"# {self.stage}", ""]
        if self.skipped:
            lines += ["Inputs unchanged: nothing to redo.", ""]
        lines += [f"Time: {self.seconds:.1f} s", ""]
        if self.counts:
            lines += ["| count | value |", "|---|---:|"]
            lines += [f"| {k} | {v} |" for k, v in self.counts.items()]
            lines.append("")
        if self.outputs:
            lines += ["| output | where |", "|---|---|"]
            lines += [f"| {k} | `{v}` |" for k, v in self.outputs.items()]
            lines.append("")
        lines += [f"- {n}" for n in self.notes]
        return "\n".join(lines).rstrip() + "\n"
