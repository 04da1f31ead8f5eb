"""Module-level WSGI apps marked with backgrounder, for the tests."""
from wsgi_bg import background, backgrounder


@background
def longrunning(n):
    for i in range(n):
        print(f"{i}: line")


@backgrounder
def report(environ, start_response):
    if environ["PATH_INFO"] == "/fail":
        start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
        return [b"failed\n"]
    print("Started", environ["SCRIPT_NAME"], environ["PATH_INFO"],
          environ["QUERY_STRING"])
    print("body:", environ["wsgi.input"].read())
    longrunning(3)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"done\n"]


@backgrounder(timeout=30)
def echo_body(environ, start_response):
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "application/octet-stream")])
    return [body]


@backgrounder
def raises(environ, start_response):
    raise KeyError("no such report")


def plain_site(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"site"]


marked_site = backgrounder("appfuncs:plain_site")


def tqdm_job(n):
    import tqdm

    for _ in tqdm.tqdm(range(n), desc="Crunching", mininterval=0, miniters=1):
        pass


def make_flask_app():
    """A Flask app whose view starts a @background job and redirects to it."""
    from flask import Flask, redirect

    flask_app = Flask("appfuncs")

    @flask_app.post("/count/<int:n>")
    def count(n):
        return redirect(longrunning(n).url, code=303)

    return flask_app
