"""Ingest: turn manifests, sidecar folders and tars into chunks of input rows."""
