"""Curation: tagged candidates into versioned evaluation datasets.

Start with ``curator`` (one cycle per dataset spec: finish a pending version, select, build,
sample, write version N pending, merge, mark done), then ``specs`` (the pure part: dataset specs,
records, digests, sampling) and ``sinks`` (MLflow datasets, Unity Catalog, files). Import the
modules themselves: this package imports nothing, so the CLI does not load MLflow to start.
"""
