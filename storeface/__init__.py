"""Storeface: code shared by the shard node, the gateway and the CLI."""
