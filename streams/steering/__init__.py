"""Steering (SPEC section 5): what a community manager steers on, from what the core keeps."""
