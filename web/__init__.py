"""Web glue both services share: errors as JSON, capped uploads, Prometheus metrics."""
