"""Images from disk: loading and batching, the one folder scanner, class-name matching, reference images, worlds."""
