"""The WSGI apps of the example project: Django alone (``django_app``), and
Django wrapped in BackgroundMiddleware (``application``).

Serve it from examples/django_example/, with the command that wraps an app
(give it Django alone), or with any WSGI server (give it the wrapped one)::

    wsgi-bg serve djsite.wsgi:django_app        # on http://127.0.0.1:8080/
    gunicorn djsite.wsgi:application            # on http://127.0.0.1:8000/

then open the page and start a report: you are sent to the job's page under
/_jobs/. (``wsgi-bg serve djsite.wsgi:application`` is refused: that app is
wrapped already, and two middlewares around one app would run its jobs on
the inner one.)
"""
import os

from django.core.wsgi import get_wsgi_application

from wsgi_bg import BackgroundMiddleware

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djsite.settings")

#: Django's own WSGI app, not wrapped: for ``wsgi-bg serve``, which wraps it.
django_app = get_wsgi_application()


def make_application(**options):
    """Django's WSGI app in a BackgroundMiddleware built with ``options``
    (the tests build their own, with a small pool). A job's page is open to
    whoever holds its id; pass ``authorize=`` to decide otherwise."""
    return BackgroundMiddleware(django_app, **options)


# Builds the middleware only: nothing starts until the first job.
application = make_application()
