"""Stage configs: typed pydantic models, loaded from YAML, overridden by flags and `--set key=value`.

Precedence, lowest first: the model's defaults, the YAML file, the stage's own flags, `--set`.
The resolved config (every default filled in) is what goes into the manifest and the fingerprint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmforge.errors import InputError


class StageConfig(BaseModel):
    """Base of every stage config: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def runtime_field(default: Any = None, **kwargs: Any) -> Any:
    """A setting that changes how the work runs but not what it produces (workers, logging...).

    It is recorded in the manifest but left out of the fingerprint, so changing it never invalidates an artifact.
    """
    extra = dict(kwargs.pop("json_schema_extra", None) or {})
    extra["fingerprint"] = False
    return Field(default, json_schema_extra=extra, **kwargs)


def fingerprinted(config: BaseModel) -> dict[str, Any]:
    """The part of a config that determines the output: everything but runtime fields."""
    data = config.model_dump(mode="json")
    return _strip_runtime(type(config), data)


def _strip_runtime(model: type[BaseModel], data: dict[str, Any]) -> dict[str, Any]:
    result = {}
    for name, value in data.items():
        field = model.model_fields.get(name)
        extra = (
            field.json_schema_extra if field is not None and isinstance(field.json_schema_extra, dict) else {}
        )
        if extra.get("fingerprint") is False:
            continue
        annotation = field.annotation if field is not None else None
        if isinstance(value, dict) and isinstance(annotation, type) and issubclass(annotation, BaseModel):
            value = _strip_runtime(annotation, value)
            if not value:  # a section of runtime settings only: nothing in it shapes the output
                continue
        result[name] = value
    return result


def parse_set(item: str) -> tuple[str, Any]:
    """`a.b=3` -> ("a.b", 3). Values are parsed as YAML so numbers, booleans and lists get their types."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise InputError(f"--set {item!r}: expected key=value, for example --set minhash.threshold=0.8")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def load_yaml_mapping(path: Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{path}: cannot read config file ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise InputError(f"{path}:{line}: not a text config file (not valid UTF-8: byte {exc.start + 1} of the file, "
                         f"{exc.reason})") from None  # fmt: skip
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InputError(f"{path}{line}: not valid YAML ({problem})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"{path}: a config file must be a mapping of settings, got {type(data).__name__}")
    return data


def load_config(
    model: type[StageConfig],
    config_file: Path | None = None,
    sets: list[str] | None = None,
    flags: dict[str, Any] | None = None,
) -> StageConfig:
    """Build a stage config from defaults, a YAML file, flags (dotted keys; None means not given) and --set."""
    data: dict[str, Any] = load_yaml_mapping(config_file) if config_file else {}
    for key, value in (flags or {}).items():
        if value is not None:
            set_dotted(data, key, value)
    for item in sets or []:
        key, value = parse_set(item)
        set_dotted(data, key, value)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        location = ".".join(str(p) for p in first["loc"])
        setting = f"config {location}" if location else "config"  # no location: the settings together
        message = first["msg"].removeprefix("Value error, ")  # pydantic's prefix for our validators' messages
        if first["type"] == "extra_forbidden":
            message = f"unknown setting (valid: {', '.join(_field_names(model, first['loc'][:-1]))})"
        source = f"{config_file}: " if config_file else ""
        more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        raise InputError(f"{source}{setting}: {message}{more}") from None


def _field_names(model: type[BaseModel], loc: tuple) -> list[str]:
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            break
        model = annotation
    return sorted(model.model_fields)


def field_info(model: type[BaseModel], dotted: str):
    """The pydantic field at a dotted path, for building CLI help from the config's own documentation."""
    parts = dotted.split(".")
    for part in parts[:-1]:
        annotation = model.model_fields[part].annotation
        assert isinstance(annotation, type) and issubclass(annotation, BaseModel), dotted
        model = annotation
    return model.model_fields[parts[-1]]


def defaults_yaml(model: type[BaseModel], indent: int = 0) -> str:
    """The default config as commented YAML: `llmforge defaults STAGE > stage.yaml` starts a recipe."""
    lines = []
    pad = " " * indent
    for name, field in model.model_fields.items():
        if field.description:
            lines.append(f"{pad}# {field.description}")
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel) and field.default_factory:
            lines.append(f"{pad}{name}:")
            lines.append(defaults_yaml(annotation, indent + 2))
            continue
        value = field.get_default(call_default_factory=True)
        if isinstance(value, BaseModel):
            value = value.model_dump(mode="json")
        dumped = yaml.safe_dump({name: value}, default_flow_style=True, sort_keys=False, width=200).strip()
        lines.append(f"{pad}{dumped.removeprefix('{').removesuffix('}')}")
    return "\n".join(lines)
