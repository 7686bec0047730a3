"""Generated datasets: scenes whose classes only motion tells apart (scenes), written in the real K400 / SSv2 formats
with planted corrupt files (datasets); the hard task (hard: the order of two motions of a small object among
look-alikes) with ground-truth object masks (masks: the file and its mapping onto token grids). Imports data
(annotation helpers, sampling and the test transform's geometry), never engine or models."""
