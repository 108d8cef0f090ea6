"""Small helpers: metrics, FLOP counting."""
