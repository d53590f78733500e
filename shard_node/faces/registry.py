"""Embedders by name: what `embedder:` in stores.yaml may say."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shard_node.faces.base import EmbedderInfo, FacePipeline
from storeface.embedders import AUTO, resolve_embedder
from storeface.errors import UnknownEmbedder

__all__ = ["AUTO", "available_embedders", "embedder_info", "make_pipeline", "resolve_embedder"]

# Each embedder's modules are imported when it is first used: a node running arcface never
# loads dlib (and its models), and the reverse.


def _dlib(options: dict[str, Any]) -> FacePipeline:
    from shard_node.faces.dlib_pipeline import DlibPipeline

    return DlibPipeline(
        upsample=int(options.get("upsample", 1)), jitters=int(options.get("jitters", 1))
    )


def _dlib_info(options: dict[str, Any]) -> EmbedderInfo:
    from shard_node.faces.dlib_pipeline import INFO

    return INFO


def _arcface(options: dict[str, Any]) -> FacePipeline:
    from shard_node.faces.onnx_pipeline import ArcFacePipeline, OnnxOptions

    return ArcFacePipeline(OnnxOptions.from_dict(options))


def _arcface_info(options: dict[str, Any]) -> EmbedderInfo:
    from shard_node.faces.onnx_pipeline import OnnxOptions, arcface_info

    return arcface_info(OnnxOptions.from_dict(options))


_FACTORIES: dict[
    str, tuple[Callable[[dict[str, Any]], FacePipeline], Callable[[dict[str, Any]], EmbedderInfo]]
] = {
    "dlib": (_dlib, _dlib_info),
    "arcface": (_arcface, _arcface_info),
}


def register(
    name: str,
    factory: Callable[[dict[str, Any]], FacePipeline],
    info: Callable[[dict[str, Any]], EmbedderInfo],
) -> None:
    _FACTORIES[name] = (factory, info)


def available_embedders() -> list[str]:
    return sorted(_FACTORIES)


def make_pipeline(name: str, options: dict[str, Any] | None = None) -> FacePipeline:
    """Build the named pipeline; loads model weights, so call it once per process."""
    name = resolve_embedder(name, options)[0]
    if name not in _FACTORIES:
        raise UnknownEmbedder(
            f"unknown embedder {name!r}; known: {', '.join(available_embedders())}"
        )
    return _FACTORIES[name][0](options or {})


def embedder_info(name: str, options: dict[str, Any] | None = None) -> EmbedderInfo:
    """Dimension, metric and threshold of the named embedder, without loading its weights."""
    name = resolve_embedder(name, options)[0]
    if name not in _FACTORIES:
        raise UnknownEmbedder(
            f"unknown embedder {name!r}; known: {', '.join(available_embedders())}"
        )
    return _FACTORIES[name][1](options or {})
