"""gunicorn-memguard: retire gunicorn workers gracefully when their memory grows.

Importing the package imports neither gevent nor uvicorn; the worker classes for those live in
``gunicorn_memguard.workers`` and load their extra only when asked for.
"""

__version__ = "0.1.0"
