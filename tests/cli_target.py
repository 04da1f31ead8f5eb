"""A small WSGI app for tests/test_cli.py, served by `python -m wsgi_bg serve`."""
from wsgi_bg import background

NOT_CALLABLE = "a string"


@background
def greet(name):
    print(f"hello {name} from a job")
    return name


def app(environ, start_response):
    if environ["PATH_INFO"] == "/job":
        job = greet("cli")
        start_response("303 See Other", [("Location", job.url)])
        return [b""]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello from cli_target"]
