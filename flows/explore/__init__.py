"""`linkstyle explore`: a finished run explored live (session: the state; server: the routes)."""
