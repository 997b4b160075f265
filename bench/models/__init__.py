"""Networks that expose ordered, named blocks (bottom to top) for strategies to act on."""
