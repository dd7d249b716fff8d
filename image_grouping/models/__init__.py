"""Message and domain types: plain data, no I/O."""
