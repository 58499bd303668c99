"""Training of the bundled mini CLIP (not needed at run time): captions, the image pool, warm start, figures."""
