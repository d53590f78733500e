"""Gateway: routes by store, finds cross-store members, registers visitors, counts visits."""
