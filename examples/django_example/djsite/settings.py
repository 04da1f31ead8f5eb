"""Settings of the example Django project: the least Django needs to serve
the reports app (no database, no sessions)."""
import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "insecure-example-key-change-me")
DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]

INSTALLED_APPS = ["djreports"]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
]
ROOT_URLCONF = "djsite.urls"
DATABASES: dict = {}
USE_TZ = True

#: Seconds each month of a report takes; the tests set it to 0. Views read
#: it and pass it to the job: a worker process does not see a setting that a
#: test overrides in its own process.
REPORT_STEP = 0.5
