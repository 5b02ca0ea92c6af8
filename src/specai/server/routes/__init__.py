"""Route handlers, one module per noun; `server/app.py` lists them."""
