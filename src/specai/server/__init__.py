"""The HTTPS server: Litestar app factory (`app.py`), routes, and the granian runner (`run.py`)."""
