#!/usr/bin/env python
"""Django's command-line utility for the example project.

``python manage.py runserver`` serves Django alone, without the middleware:
to run jobs, serve ``djsite.wsgi:django_app`` with ``wsgi-bg serve``, or
``djsite.wsgi:application`` with any WSGI server (see djsite/wsgi.py).
"""
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djsite.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
