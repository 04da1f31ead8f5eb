"""The WSGI app of the example project: Django wrapped in BackgroundMiddleware.

Serve it with any WSGI server, from examples/django_example/::

    wsgi-bg serve djsite.wsgi:application         # or:
    gunicorn djsite.wsgi:application

then open http://127.0.0.1:8080/ (8000 with gunicorn) and start a report:
you are sent to the job's page under /_jobs/.
"""
import os

from django.core.wsgi import get_wsgi_application

from wsgi_bg import BackgroundMiddleware

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djsite.settings")


def make_application(**options):
    """Django's WSGI app in a BackgroundMiddleware built with ``options``
    (the tests build their own, with a small pool). A job's page is open to
    whoever holds its id; pass ``authorize=`` to decide otherwise."""
    return BackgroundMiddleware(get_wsgi_application(), **options)


# Builds the middleware only: nothing starts until the first job.
application = make_application()
