"""HTML of the status pages, and the text clean-up every answer goes through.

Everything here is a pure function of its arguments, so the pages can be
tested without a server. Job text (name, output, result, error) is whatever a
job wrote: it reaches HTML only through :class:`markupsafe.Markup` formatting,
which escapes it, and every page passes :func:`clean_text` last, so a lone
surrogate or a NUL can neither break the UTF-8 encoding nor reach a browser.

Output is shown as a terminal would show it
(:class:`wsgi_bg.terminal.Screen`); the page's JavaScript
(``static/status.js``) applies the same rules to new output.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Iterable, Mapping
from typing import Any

from markupsafe import Markup

from ..terminal import Screen


def clean_text(text: str) -> str:
    """``text`` with each lone surrogate replaced by U+FFFD.

    A Python ``str`` may hold lone surrogates (from ``surrogateescape``, or a
    job writing them directly); they cannot be encoded to UTF-8, and JSON
    parsers disagree about them. Surrogate pairs become the character they
    encode.

    :param text: any text.
    :return: text that encodes to UTF-8 without error.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # Round-trip through UTF-16: valid pairs join, lone halves become U+FFFD.
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text


def html_text(text: str) -> str:
    """``text`` made safe to place in an HTML document (before escaping).

    Besides :func:`clean_text`, NUL becomes U+FFFD, as an HTML parser would
    read it anyway.
    """
    return clean_text(text).replace("\x00", "\ufffd")


# -- small pieces ---------------------------------------------------------------


def format_time(epoch: float | None) -> tuple[str, str]:
    """``(iso, text)`` for a ``<time>`` element; ``("", "—")`` for ``None``.

    The server writes UTC; the page's script shows it in the reader's zone.
    """
    if epoch is None or not math.isfinite(epoch):
        return "", "—"
    moment = datetime.datetime.fromtimestamp(epoch, tz=datetime.UTC)
    return (
        moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        moment.strftime("%Y-%m-%d %H:%M:%S UTC"),
    )


def format_duration(start: float | None, end: float | None) -> str:
    """``"1 h 02 min"``, ``"3.2 s"``...: how long between two epochs; ``""``
    if either is unknown."""
    if start is None or end is None:
        return ""
    seconds = max(0.0, end - start)
    if not math.isfinite(seconds):
        return ""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _number(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:g}" if isinstance(value, float) else str(value)
    return ""


def progress_parts(progress: Mapping[str, Any] | None) -> tuple[str, str, str]:
    """``(value, max, text)`` for a ``<progress>`` element and its caption.

    ``value`` and ``max`` are ``""`` when unknown (an indeterminate bar).
    """
    if not progress:
        return "", "", ""
    done, total = progress.get("done"), progress.get("total")
    value, maximum = _number(done), _number(total)
    if not value or not math.isfinite(float(value)):
        value = ""
    if not maximum or not math.isfinite(float(maximum)) or float(maximum) <= 0:
        maximum = ""
    if not maximum:
        value = ""  # a value without a maximum would draw a full bar
    elif value:
        value = _number(min(max(float(value), 0.0), float(maximum)))
    caption = f"{_number(done)} / {_number(total)}" if maximum else _number(done)
    message = progress.get("message")
    if message:
        caption = f"{caption} · {message}" if caption else str(message)
    return value, maximum, caption


def _attr(name: str, value: str) -> Markup:
    """`` name="value"`` or nothing when value is empty."""
    if not value:
        return Markup("")
    return Markup(' {}="{}"').format(Markup(name), value)


def _hidden(hide: bool) -> Markup:
    return Markup(" hidden") if hide else Markup("")


def _badge(state: str, element_id: str = "") -> Markup:
    return Markup('<span{} class="badge state-{}">{}</span>').format(
        _attr("id", element_id), state, state.replace("_", " ")
    )


def _time(epoch: float | None, element_id: str = "") -> Markup:
    iso, text = format_time(epoch)
    return Markup("<time{}{}>{}</time>").format(
        _attr("id", element_id), _attr("datetime", iso), text
    )


def _progress(progress: Mapping[str, Any] | None, *, ids: bool) -> Markup:
    value, maximum, caption = progress_parts(progress)
    return Markup(
        '<div class="progress"{}{}><progress{}{}{}></progress>'
        ' <span class="progress-text"{}>{}</span></div>'
    ).format(
        _attr("id", "progress-box" if ids else ""), _hidden(progress is None),
        _attr("id", "progress" if ids else ""), _attr("value", value),
        _attr("max", maximum), _attr("id", "progress-text" if ids else ""), caption,
    )


# Every <pre> opens with a newline: an HTML parser drops one newline right
# after <pre>, which would otherwise eat the first line of output that starts
# with an empty line.


def _document(root: str, title: str, main: Markup, *, refresh: int) -> str:
    # With JavaScript the script updates the page live; without it (noscript),
    # a meta refresh reloads it while a job runs. CSP does not block either.
    head_refresh = (
        Markup('<noscript><meta http-equiv="refresh" content="{}"></noscript>\n')
        .format(refresh) if refresh else Markup("")
    )
    page = Markup(
        "<!doctype html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        "<title>{title} · wsgi_bg</title>\n"
        '<link rel="stylesheet" href="{root}/static/status.css">\n'
        '<script src="{root}/static/status.js" defer></script>\n'
        "{refresh}</head>\n<body>\n"
        '<header class="top"><a class="brand" href="{root}/">Background jobs</a>'
        "</header>\n<main>\n{main}</main>\n</body>\n</html>\n"
    ).format(title=title, root=root, refresh=head_refresh, main=main)
    return html_text(str(page))


# -- pages ----------------------------------------------------------------------


def list_page(
    root: str, jobs: Iterable[Mapping[str, Any]], counts: Mapping[str, int]
) -> str:
    """The HTML list of jobs, newest first.

    :param root: the pages' mount point (the request's ``SCRIPT_NAME``);
        every link starts with it.
    :param jobs: :meth:`Job.to_dict <wsgi_bg.Job.to_dict>` of each job.
    :param counts: how many jobs are stored in each state.
    """
    rows = []
    active = False
    for job in jobs:
        active = active or not job["done"]
        rows.append(Markup(
            "<tr><td>{badge}</td>"
            '<td><a href="{root}/{id}">{name}</a>'
            '<div class="jobid">{short}…</div></td>'
            "<td>{created}</td><td>{started}</td><td>{ended}</td>"
            "<td>{progress}</td></tr>\n"
        ).format(
            badge=_badge(job["state"]), root=root, id=job["id"], name=job["name"],
            short=job["id"][:8], created=_time(job["created_at"]),
            started=_time(job["started_at"]), ended=_time(job["ended_at"]),
            progress=_progress(job["progress"], ids=False)
            if job["progress"] else Markup(""),
        ))
    summary = Markup(" ").join(
        Markup('<span class="count">{} {}</span>').format(_badge(state), number)
        for state, number in counts.items() if number
    )
    if rows:
        table = Markup(
            '<table class="jobs">\n<thead><tr><th>State</th><th>Job</th>'
            "<th>Created</th><th>Started</th><th>Ended</th><th>Progress</th>"
            "</tr></thead>\n<tbody>\n{}</tbody>\n</table>\n"
        ).format(Markup("").join(rows))
    else:
        table = Markup('<p class="empty">No jobs yet.</p>\n')
    main = Markup('<h1>Jobs</h1>\n<p class="counts">{}</p>\n{}').format(summary, table)
    main = Markup('<div id="jobs" data-active="{}">\n{}</div>\n').format(
        "true" if active else "false", main
    )
    return _document(root, "Jobs", main, refresh=5 if active else 0)


def job_page(root: str, job: Mapping[str, Any], output: str, offset: int) -> str:
    """The HTML page of one job.

    :param root: the pages' mount point (the request's ``SCRIPT_NAME``).
    :param job: the job's :meth:`~wsgi_bg.Job.to_dict`.
    :param output: the job's output so far, raw.
    :param offset: where that output ends (the ``next`` of the JSON API); the
        page's script asks for what follows.
    """
    job_id = job["id"]
    done = bool(job["done"])
    screen = Screen()
    screen.feed(output)
    api = f"{root}/api/jobs/{job_id}"
    main = Markup(
        '<article id="job" data-api="{api}" data-events="{api}/events"'
        ' data-next="{offset}" data-done="{done}">\n'
        '<h1>{badge} <span class="name">{name}</span></h1>\n'
        '<p class="jobid">{id}</p>\n'
        '<dl class="times">'
        "<dt>Created</dt><dd>{created}</dd>"
        "<dt>Started</dt><dd>{started}</dd>"
        "<dt>Ended</dt><dd>{ended}</dd>"
        '<dt>Duration</dt><dd id="duration">{duration}</dd></dl>\n'
        "{progress}\n"
        '<form id="cancel" class="cancel" method="post" action="{api}/cancel"'
        '{hide_cancel}><button type="submit">Cancel job</button>'
        '<span id="cancel-note" class="note"{hide_note}> cancel requested…</span>'
        "</form>\n"
        "<h2>Output</h2>\n"
        '<pre id="output" class="output" data-cr="{cr}">\n{done_text}'
        '<span id="output-line">{line}</span></pre>\n'
        '<section id="result-box"{hide_result}><h2>Result</h2>'
        '<pre id="result" class="result">\n{result}</pre></section>\n'
        '<section id="error-box"{hide_error}><h2>Error</h2>'
        '<pre id="error" class="error">\n{error}</pre></section>\n'
        '<p class="api">JSON: <a href="{api}">{api}</a></p>\n'
        "</article>\n"
    ).format(
        api=api, offset=offset, done="true" if done else "false",
        badge=_badge(job["state"], "state"), name=job["name"], id=job_id,
        created=_time(job["created_at"], "created"),
        started=_time(job["started_at"], "started"),
        ended=_time(job["ended_at"], "ended"),
        duration=format_duration(job["started_at"], job["ended_at"]),
        progress=_progress(job["progress"], ids=True),
        hide_cancel=_hidden(done),
        hide_note=_hidden(not job.get("cancel_requested")),
        cr="1" if screen.pending_cr else "0",
        done_text=screen.done, line=screen.line,
        hide_result=_hidden(job["result"] is None), result=job["result"] or "",
        hide_error=_hidden(not job["error"]), error=job["error"] or "",
    )
    return _document(root, str(job["name"]), main, refresh=0 if done else 2)
