"""Picks the generator backend for `generator.type` and the chosen engines."""

from __future__ import annotations

from engines.generator.avatar import load_avatar
from engines.generator.config import GeneratorConfig, MeshGeneratorConfig
from engines.generator.interface import Generator


def build_generator(
    config: GeneratorConfig, avatar: str, width: int, height: int, engine: str = "cpu"
) -> Generator:
    """The configured generator for `avatar` ('default' or an image path) at width x height
    on the chosen engines (engines.runtime.select: the mesh generator's pixel work runs in
    torch on the GPU for cuda and tensorrt). Raises AvatarError when the avatar cannot be
    read or prepared."""
    if isinstance(config, MeshGeneratorConfig):
        from engines.generator.avatar_prep import prepare_avatar

        prepared = prepare_avatar(avatar)
        if engine != "cpu":
            from engines.generator.mesh_torch import TorchMeshGenerator

            return TorchMeshGenerator(config, prepared, width, height, "cuda")
        from engines.generator.mesh_cpu import MeshGenerator

        return MeshGenerator(config, prepared, width, height)
    from engines.generator.still import StillGenerator

    return StillGenerator(config, load_avatar(avatar), width, height)
