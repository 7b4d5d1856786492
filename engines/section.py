"""The base of every config section, shared by the engines' own config models (each stage
keeps its config next to its code) and the service's, which daemon/config.py composes."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """Base of every config section: a misspelled key is an error, never silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)
