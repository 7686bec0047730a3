"""Preprocessing jobs over whole datasets (scan, resize, frames): job specs (jobs), per-video steps and shards
(run), outputs' temporaries (staging), encoding and verification (media), a crash-tolerant worker pool (pool), and
submitit arrays (submit). Imports data (readers, annotation parsers), never models or engine."""
