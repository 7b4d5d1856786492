"""config.yaml and the README's config reference, generated from the config model, so the
model stays the single source of defaults, validation and documentation."""

from __future__ import annotations

import textwrap
import typing
from collections.abc import Iterator
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from daemon.config import (
    Config,
    FileSinkConfig,
    NullSinkConfig,
    VirtualCamSinkConfig,
)

SINK_MODELS = (VirtualCamSinkConfig, FileSinkConfig, NullSinkConfig)
SINK_EXAMPLES = {FileSinkConfig: {"path": "out/live.mp4"}}
HEADER = """\
# Talking Head Cam configuration (generated from daemon/config.py by `make config`).
# Copy it to ~/.config/talking-head-cam/config.yaml and edit; unknown keys are errors.
# Check a file without starting: talking-head-cam check-config FILE
# Apply changes to the running daemon: systemctl --user reload talking-head-cam
"""


def _scalar(value: Any) -> str:
    return yaml.safe_dump({"v": value}, default_flow_style=True, width=1000)[4:-2]


def _flow(mapping: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {_scalar(v)}" for k, v in mapping.items()) + "}"


def _doc(model: type[BaseModel]) -> str:
    return (model.__doc__ or "").strip().splitlines()[0]


def _section_models(info: FieldInfo) -> tuple[type[BaseModel], ...]:
    """The model(s) of a section field: one class, or a tagged union's members (the default
    first); empty for plain values and lists."""
    annotation = info.annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return (annotation,)
    members = tuple(
        m for m in typing.get_args(annotation) if isinstance(m, type) and issubclass(m, BaseModel)
    )
    if not members or info.default_factory is None:
        return ()
    default = type(info.default_factory())
    return (default, *(m for m in members if m is not default))


def _field_lines(model: type[BaseModel], indent: str) -> Iterator[str]:
    defaults = model.model_construct().model_dump()
    for name, info in model.model_fields.items():
        nested = _section_models(info)
        if nested:
            yield from _comment(_doc(nested[0]), indent)
            yield f"{indent}{name}:"
            yield from _field_lines(nested[0], indent + "  ")
            continue
        if info.description:
            yield from _comment(info.description, indent)
        if name in defaults:
            yield f"{indent}{name}: {_scalar(defaults[name])}"
        else:
            yield f"{indent}# {name}: (required)"


def _comment(text: str, indent: str) -> Iterator[str]:
    for line in textwrap.wrap(text, width=96 - len(indent)):
        yield f"{indent}# {line}"


def _sink_doc_lines(model: type[BaseModel]) -> Iterator[str]:
    type_name = typing.get_args(model.model_fields["type"].annotation)[0]
    yield f"#   type: {type_name} — {_doc(model)}"
    defaults = model.model_construct().model_dump()
    for name, info in model.model_fields.items():
        if name != "type":
            value = _scalar(defaults[name]) if name in defaults else "(required)"
            yield f"#     {name}: {value} — {info.description}"


def _sink_example(model: type[BaseModel]) -> dict[str, Any]:
    type_name = typing.get_args(model.model_fields["type"].annotation)[0]
    example = {"type": type_name, **SINK_EXAMPLES.get(model, {})}
    return model.model_validate(example).model_dump()


def render_config_yaml() -> str:
    lines = HEADER.splitlines()
    defaults = Config().model_dump()
    for name, info in Config.model_fields.items():
        lines.append("")
        models = _section_models(info)
        if models:
            lines += [f"# {_doc(m)}" for m in models]
            lines.append(f"{name}:")
            lines += _field_lines(models[0], "  ")
        elif name == "sinks":
            lines += _comment(info.description, "")
            for model in SINK_MODELS:
                lines += _sink_doc_lines(model)
            lines.append(f"{name}:")
            lines += [f"  - {_flow(s)}" for s in defaults["sinks"]]
            lines += [f"  # - {_flow(_sink_example(m))}" for m in SINK_MODELS[1:]]
        else:
            lines += [*_comment(info.description, ""), f"{name}: {_scalar(defaults[name])}"]
    return "\n".join(lines) + "\n"


def render_reference_markdown() -> str:
    rows = ["| key | default | meaning |", "| --- | --- | --- |"]

    def add(key: str, model: type[BaseModel], skip: tuple[str, ...] = ()) -> None:
        defaults = model.model_construct().model_dump()
        for name, info in model.model_fields.items():
            nested = _section_models(info)
            if nested:
                add(f"{key}{name}.", nested[0])
            elif name not in skip:
                default = f"`{_scalar(defaults[name])}`" if name in defaults else "required"
                rows.append(f"| `{key}{name}` | {default} | {info.description or ''} |")

    for name, info in Config.model_fields.items():
        models = _section_models(info)
        if models:
            add(f"{name}.", models[0])
        elif name == "sinks":
            for model in SINK_MODELS:
                type_name = typing.get_args(model.model_fields["type"].annotation)[0]
                rows.append(f"| `sinks[].type` | `{type_name}` | {_doc(model)} |")
                add(f"sinks[{type_name}].", model, skip=("type",))
        else:
            rows.append(
                f"| `{name}` | `{_scalar(Config().model_dump()[name])}` | {info.description} |"
            )
    return "\n".join(rows) + "\n"
