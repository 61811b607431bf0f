"""Developer tools that run beside the server (``python -m scripts.cluster``)."""
