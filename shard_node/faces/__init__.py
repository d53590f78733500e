"""Face pipelines: detection, alignment and embedding behind one interface."""

from shard_node.faces.base import Detection, EmbedderInfo, Face, FacePipeline
from shard_node.faces.registry import available_embedders, embedder_info, make_pipeline

__all__ = [
    "Detection",
    "EmbedderInfo",
    "Face",
    "FacePipeline",
    "available_embedders",
    "embedder_info",
    "make_pipeline",
]
