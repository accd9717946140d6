"""The base of every stage's settings: unknown keys are errors, so a typo never passes silently."""

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
