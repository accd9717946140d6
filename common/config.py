"""Settings for every entry point: the strict base model, the one TOML reader, the one error format.

`faces`, `python -m scraper`, `python -m models.train` and torchrun all read faces.toml through
`read_toml` and report bad settings through `describe_errors`, so every mistake reads the same way:
the file, the table, the key and what to do about it.
"""

import tomllib
import types
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator

from common.report import BadInputError

Model = TypeVar("Model", bound=BaseModel)
MAX_SEED = 2**32 - 1  # what numpy's legacy seeding and every torch device accept


class StrictModel(BaseModel):
    """Unknown keys are errors, and so are numbers written as text or as true/false.

    pydantic alone would read `steps = true` as 1 and `steps = "300"` as 300; a typo of that kind in
    faces.toml must fail with the key's name instead.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _numbers_are_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if field is not None and isinstance(value, bool | str) and _wants_number_only(field.annotation):
            kind = "true/false" if isinstance(value, bool) else "text"
            raise ValueError(f"must be a number, not {kind}; write the number without quotes")
        return value


def _leaf_types(annotation: Any) -> set[type]:
    """The plain types an annotation accepts: int | None -> {int, NoneType}; Literal[32, 64] -> {int}."""
    origin = get_origin(annotation)
    if origin is Literal:
        return {type(arg) for arg in get_args(annotation)}
    if origin in (Union, types.UnionType):
        return set().union(*(_leaf_types(arg) for arg in get_args(annotation)))
    return {annotation} if isinstance(annotation, type) else {object}


def _wants_number_only(annotation: Any) -> bool:
    leaves = _leaf_types(annotation) - {type(None)}
    return bool(leaves) and leaves <= {int, float}


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file as a dict; a missing, unreadable or malformed file is a BadInputError naming it."""
    path = Path(path)
    if path.is_dir():
        raise BadInputError(f"config {path} is a folder; pass a faces.toml file with --config")
    if not path.is_file():
        raise BadInputError(f"config file {path} does not exist; pass an existing faces.toml with --config")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadInputError(f"{path}: not UTF-8 text (byte {e.start}); save the file as UTF-8") from None
    except OSError as e:
        raise BadInputError(f"cannot read config {path}: {e.strerror}; check its permissions") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise BadInputError(f"{path}: not valid TOML ({e}); fix the syntax at that line") from None


def parse_setting(item: str) -> tuple[str, Any]:
    """A command line's `--set KEY=VALUE`: the value as TOML reads it (steps=1000 is a number,
    augment="" an empty string), else as a bare string (device=cpu)."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise BadInputError(f"--set {item!r}: write KEY=VALUE, e.g. --set steps=1000")
    try:
        return key.strip(), tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        return key.strip(), value.strip()


def describe_errors(error: ValidationError, source: str, table: str | None = None) -> str:
    """One line per problem, naming the table and key as the user wrote them.

    `table` is the faces.toml table the model was read from, when the model is one stage's settings.
    """
    lines = []
    for e in error.errors():
        loc = ([table] if table else []) + [str(p) for p in e["loc"]]
        where = f"[{loc[0]}] {'.'.join(loc[1:])}" if len(loc) > 1 else loc[0] if loc else "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(
                f"{source}: unknown key {where}; check its spelling against the docs/ page of that stage"
            )
        else:
            got = f" (got {e['input']!r})" if "input" in e and not isinstance(e["input"], dict) else ""
            message = e["msg"].removeprefix("Value error, ")
            lines.append(f"{source}: {where}: {message}{got}" if loc else f"{source}: {message}{got}")
    return "\n".join(lines)


def parse_model(model: type[Model], data: dict[str, Any], source: str, table: str | None = None) -> Model:
    """`model` from `data`; a ValidationError becomes a BadInputError in the one format above."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise BadInputError(describe_errors(e, source, table)) from None


def load_table(path: str | Path, table: str, model: type[Model]) -> tuple[Model, dict[str, Any]]:
    """One stage's table of faces.toml as its settings model, plus the whole document."""
    doc = read_toml(path)
    return parse_model(model, doc.get(table, {}), str(path), table), doc
