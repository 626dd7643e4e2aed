"""The local web app behind the pages that need a live server: ``linkstyle labels open`` and
``linkstyle explore`` (``app``: routes, Host guard, errors; ``serve``: uvicorn on 127.0.0.1)."""
