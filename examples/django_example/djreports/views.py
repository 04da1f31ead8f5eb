from django.conf import settings
from django.http import HttpResponse
from django.middleware.csrf import get_token
from django.views.decorators.http import require_POST

from .tasks import build_report


def home(request):
    return HttpResponse(
        "<h1>Django + wsgi_bg</h1>"
        '<form method="post" action="/reports/2026">'
        f'<input type="hidden" name="csrfmiddlewaretoken" value="{get_token(request)}">'
        "<button>Build the 2026 report</button></form>"
    )


@require_POST
def start_report(request, year):
    # A Job, at once: the report is built in a worker process. Send the user
    # to its live page (303: the browser follows with a GET).
    job = build_report(year, step=settings.REPORT_STEP)
    response = HttpResponse(f"Started job {job.id}\n", status=303,
                            content_type="text/plain")
    response["Location"] = job.url
    return response
