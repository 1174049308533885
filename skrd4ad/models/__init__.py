"""Networks of RD4AD / SK-RD4AD: frozen teacher, one-class bottleneck, student decoder."""
