"""Generated datasets: scenes whose classes only motion tells apart (scenes), written in the real K400 / SSv2 formats
with planted corrupt files (datasets). Imports data (annotation helpers), never engine or models."""
