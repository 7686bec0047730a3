"""Token drawings (tools/visualize_tokens.py): which tokens each token-reduction stage of a model kept, over every
frame of one clip.

``tokens``: kept-token ids -> per-stage boolean grids, per-frame counts, stage labels. ``draw``: denormalised
frames, the dimmed overlay, the tile layout and the three outputs (overview PNG, one PNG per stage, animated GIF).
``visualize``: one clip through the project's test path and a checkpoint loaded as tools/test_net.py loads it,
drawn. Imported by tools only, never by models, data, engine or the benchmarks.
"""
