"""Running the cluster: the topology from stores.yaml, as supervisord, nginx and compose."""
