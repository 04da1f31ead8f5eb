import pytest

from wsgi_bg.terminal import RedrawCollapser, parse_progress, render_terminal


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        pytest.param(["plain\ntext\n"], "plain\ntext\n", id="no-cr"),
        pytest.param(["a\r\nb\r\n"], "a\nb\n", id="crlf-is-newline"),
        pytest.param(["10%\r20%\r30%"], "\r30%", id="redraws-collapse"),
        pytest.param(["10%\r20%\r30%\ndone\n"], "\r30%\ndone\n", id="then-newline"),
        pytest.param(["a\r", "\nb"], "a\nb", id="crlf-split-across-chunks"),
        pytest.param(["a\r", "b"], "a\rb", id="cr-carried-to-next-chunk"),
        pytest.param(["x\r\r"], "x", id="trailing-crs-held-back"),
    ],
)
def test_collapser(chunks, expected):
    collapser = RedrawCollapser()
    assert "".join(collapser.feed(c) for c in chunks) == expected


def test_collapser_final_drops_a_dangling_cr():
    collapser = RedrawCollapser()
    assert collapser.feed("50%\r") == "50%"
    assert collapser.feed("", final=True) == ""


def test_thousands_of_redraws_keep_one_copy():
    collapser = RedrawCollapser()
    text = "".join(f"\r{i}/5000" for i in range(5001)) + "\n"
    assert collapser.feed(text) == "\r5000/5000\n"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("a\rb\rc\nd", "c\nd"),
        ("line\r\nnext", "line\nnext"),
        ("keep\r", "keep"),
        ("x\r\ry", "y"),
    ],
)
def test_render_terminal(text, shown):
    assert render_terminal(text) == shown


@pytest.mark.parametrize(
    ("text", "progress"),
    [
        pytest.param("\r 45%|████▌     | 45/100 [00:01<00:01, 44.5it/s]",
                     {"done": 45, "total": 100, "message": None}, id="plain"),
        pytest.param("\rDownloading:  12%|█▏  | 1.20k/10.0k [00:01<00:08]",
                     {"done": 1200, "total": 10000, "message": "Downloading"},
                     id="desc-and-unit-scale"),
        pytest.param("\r 1%|| 1/100\r 2%|| 2/100\r 3%|| 3/100",
                     {"done": 3, "total": 100, "message": None}, id="last-wins"),
        pytest.param("50%|#####     | 5/10", {"done": 5, "total": 10, "message": None},
                     id="ascii-bar"),
    ],
)
def test_parse_progress(text, progress):
    assert parse_progress(text) == progress


@pytest.mark.parametrize("text", ["no bar here", "45it [00:01, 44.5it/s]", "1/0 |"])
def test_parse_progress_ignores_other_text(text):
    assert parse_progress(text) is None
