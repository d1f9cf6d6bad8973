"""HTTP/1.1 listener and upstream connections (httptools on asyncio protocols)."""
