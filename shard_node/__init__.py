"""Shard node: one store's face pipeline and faiss index, as an HTTP service."""
