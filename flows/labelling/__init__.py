"""The labelling page of `linkstyle labels open` (server.py and its static page)."""
