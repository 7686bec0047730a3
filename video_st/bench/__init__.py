"""Measurement for tools/benchmark.py; imported by tools (and tests) only, never by models, data or engine.

measure (FLOPs, interleaved timings, bytes saved for backward: ``run_benchmark``), tables (the model and methods
tables: ratios, markdown, JSON), throughput (the data pipeline), sweeps (train-methods: train and test each
method with the project's tools, read their results), plots (test top-1 vs GFLOPs).
"""
