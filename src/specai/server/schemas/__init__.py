"""Wire types: the msgspec Structs of every request and response body, one module per noun (msgspec only)."""
