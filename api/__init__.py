"""The top layer: CLI and FastAPI service. Nothing imports api."""
