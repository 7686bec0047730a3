"""Video data: decoding, sampling, transforms, datasets, preprocessing jobs. Never imports models or engine."""
