#!/usr/bin/env python
"""Preprocess a video dataset: scan for corrupt files, resize/re-encode to H.264, or extract JPEG frames.

    # every video below a folder, 4 local processes
    python tools/preprocess.py scan   --input /data/k400/videos --output /data/k400_scan --workers 4
    # a K400 CSV, videos under --root (ROOT/NAME, ROOT/SPLIT/NAME or ROOT/SPLIT/LABEL/NAME)
    python tools/preprocess.py resize --input k400/train.csv --root /data/k400 --output /data/k400_320
    # the fast formats (docs/data.md): short GOP, or JPEG frames at short side 256
    python tools/preprocess.py resize --input k400/train.csv --root /data/k400 --output /data/k400_256_g8 \
        --short-side 256 --gop 8
    python tools/preprocess.py frames --input k400/train.csv --root /data/k400 --output /data/k400_frames256 \
        --short-side 256
    # Something-Something-v2: the split JSON as --input, the labels JSON as --ssv2-labels
    python tools/preprocess.py frames --input ssv2/train.json --ssv2-labels ssv2/labels.json \\
        --root /data/ssv2/videos --output /data/ssv2_frames
    # a 'path label' list, shard 3 of 16 (the frame list is merged by the last shard to finish)
    python tools/preprocess.py frames --input ssv2_train.txt --root /data/ssv2 --output /data/ssv2_frames \\
        --fps 12 --shard 3 --num-shards 16
    python tools/preprocess.py merge frames --input ssv2_train.txt --root /data/ssv2 --output /data/ssv2_frames \\
        --num-shards 16                       # the same merge by hand
    # every shard as one Slurm array (submitit), or as local submitit processes
    python tools/preprocess.py resize --input ... --output ... --num-shards 64 --slurm --partition cpu \\
        --time 240 --cpus 8 --workers 8 --array-parallelism 32
    python tools/preprocess.py resize --input ... --output ... --num-shards 2 --submitit-local

Re-running a job skips outputs that verify and redoes the rest. Prints one line with the counts
ok / failed / skipped; exits 0 whenever the job ran (failed videos are in the manifest), 2 on a usage error,
1 when a submitted shard job has no result.
"""


from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv: list[str] | None = None) -> int:
    import video_st  # noqa: F401  (applies the library fixes before anything else imports)
    from video_st.preprocess.cli import main as run

    outcome = run(argv, description=__doc__)
    for line in outcome.lines:
        print(line)
    for line in outcome.errors:
        print(line, file=sys.stderr)
    return outcome.code


if __name__ == "__main__":
    sys.exit(main())
