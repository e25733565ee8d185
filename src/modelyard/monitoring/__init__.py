"""Watching served models: the compact representation each answer is logged with (`embedding`), what a
version was evaluated on (`profile`), and whether recent traffic still looks like it (`drift`)."""
