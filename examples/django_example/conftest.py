"""Django set-up for the example's tests (what pytest-django would do)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # workers import
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djsite.settings")     # djreports

import django  # noqa: E402

django.setup()
