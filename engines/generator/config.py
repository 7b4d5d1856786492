"""The generator stage's config (`generator:`): one model per `type`, a tagged union."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from engines.section import Section


class StillGeneratorConfig(Section):
    """Publishes the avatar image itself, scaled and letterboxed (no animation)."""

    type: Literal["still"] = Field("still", description="still: the avatar image, unanimated")


class MeshGeneratorConfig(Section):
    """Animates the avatar: its 3D face mesh follows your expression and head pose."""

    type: Literal["mesh"] = Field(
        "mesh", description="mesh: the avatar's face mesh, deformed and re-posed, warped"
    )
    background: Literal["avatar", "blur", "color", "image"] = Field(
        "avatar",
        description="behind the person: the avatar's own (person painted out), "
        "blurred, a colour, or an image",
    )
    background_color: str = Field(
        "#30343c", pattern=r"^#[0-9a-fA-F]{6}$", description="for background: color (#rrggbb)"
    )
    background_image: str | None = Field(None, description="for background: image, the image file")
    mouth_interior: Literal["synthetic", "driver"] = Field(
        "synthetic",
        description="inside an open mouth: a synthetic interior coloured from the "
        "avatar, or the driver's own (warped, colour-matched; shows part of your real face)",
    )
    skin_detail: Literal["driver", "off"] = Field(
        "driver",
        description="driver: your expression wrinkles (brow furrows, smile lines) carried onto "
        "the avatar's skin as a faint luminance ratio to your neutral face (band-passed, no "
        "colour, shading or features of yours); off: the avatar's skin alone",
    )
    map_scale: Literal[1, 2] = Field(
        2, description="warp maps at 1/map_scale resolution: 2 is faster, 1 a little sharper"
    )

    def background_bgr(self) -> tuple[int, int, int]:
        value = int(self.background_color[1:], 16)
        return value & 0xFF, (value >> 8) & 0xFF, value >> 16

    @model_validator(mode="after")
    def _image_needs_a_file(self) -> MeshGeneratorConfig:
        if self.background == "image" and not self.background_image:
            raise ValueError("background: image needs background_image: PATH")
        return self


GeneratorConfig = Annotated[MeshGeneratorConfig | StillGeneratorConfig, Field(discriminator="type")]
