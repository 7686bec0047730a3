"""Models: layers, token sparsification, adapters, the video ViT, checkpoint conversion, FLOP counting."""
