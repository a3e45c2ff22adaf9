"""The few settings a Django project needs to serve under gunicorn: no database, no templates, no
static files. Your project's settings.py has more; what matters for memguard is said in README.md."""

import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "memguard-example-not-secret")
# DEBUG = True keeps every SQL query of a request in connection.queries: a leak of its own
DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",")

ROOT_URLCONF = "mysite.urls"
WSGI_APPLICATION = "mysite.wsgi.application"
INSTALLED_APPS: list[str] = []
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True
