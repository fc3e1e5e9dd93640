"""Example services: one users service, served by FastAPI and by Litestar."""
