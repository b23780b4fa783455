"""The `orders` console script."""
