import pytest

from wsgi_bg.terminal import (
    RedrawCollapser,
    Screen,
    parse_progress,
    render_terminal,
    rgb_to_256,
    tail,
)


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


# -- ANSI styles ----------------------------------------------------------------

@pytest.mark.parametrize(("text", "lines"), [
    pytest.param("\x1b[31mred\x1b[0m plain\n", [[("fg-1", "red"), ("", " plain")]],
                 id="16-colours"),
    pytest.param("\x1b[1;4;95mX\n", [[("fg-13 a-b a-u", "X")]],
                 id="bright-bold-underline"),
    pytest.param("\x1b[38;5;208;48;5;17mX\n", [[("fg-208 bg-17", "X")]], id="256"),
    pytest.param("\x1b[38;2;255;0;0mX\n", [[("fg-196", "X")]], id="truecolour-nearest"),
    pytest.param("\x1b[2;3mX\x1b[22;23mY\n", [[("a-d a-i", "X"), ("", "Y")]],
                 id="dim-italic-off"),
    pytest.param("\x1b[31ma\nb\x1b[m\n", [[("fg-1", "a")], [("fg-1", "b")]],
                 id="style-spans-lines"),
    pytest.param("\x1b[38;5;999mX\x1b[38;5mY\n", [[("", "X"), ("", "Y")]],
                 id="malformed-ignored"),
    pytest.param("\x1b]0;title\x07\x1b[2K\x1b[?25lA\x1b7\x1b(B\n", [[("", "A")]],
                 id="other-escapes-dropped"),
    pytest.param("\x1b[31m10%\r50%\r\x1b[32m100%\n", [[("fg-2", "100%")]],
                 id="redraw-keeps-style"),
])
def test_screen_styles(text, lines):
    screen = Screen()
    screen.feed(text)
    assert screen.lines == lines
    assert "\x1b" not in screen.text()


def test_screen_waits_for_a_cut_escape():
    screen = Screen()
    screen.feed("a\x1b[3")
    assert screen.unfinished == "\x1b[3" and screen.line == [("", "a")]
    screen.feed("1mb\n")
    assert screen.lines == [[("", "a"), ("fg-1", "b")]]


def test_collapser_keeps_the_escapes_of_dropped_redraws():
    text = RedrawCollapser().feed("\x1b[31m 50%\r100%\n", final=True)
    screen = Screen()
    screen.feed(text)
    assert screen.lines == [[("fg-1", "100%")]]


def test_parse_progress_sees_through_colours():
    bar = "\x1b[32mdl:  45%|\x1b[0m████▌     | 45/100 [00:01<00:01]"
    assert parse_progress(bar) == {"done": 45, "total": 100, "message": "dl"}


@pytest.mark.parametrize(("rgb", "index"), [
    ((0, 0, 0), 16), ((255, 255, 255), 231), ((255, 0, 0), 196),
    ((0, 135, 255), 33), ((128, 128, 128), 244), ((300, -5, 0), 196),
])
def test_rgb_to_256(rgb, index):
    assert rgb_to_256(*rgb) == index


# -- the tail a page draws ---------------------------------------------------------
@pytest.mark.parametrize(("text", "limit", "expected"), [
    pytest.param("abc\ndef\n", 100, ("abc\ndef\n", 0), id="short-whole"),
    pytest.param("abc\ndef\nghi\n", 5, ("ghi\n", 2), id="from-a-line-start"),
    pytest.param("abc\ndef\nghi", 4, ("ghi", 2), id="unfinished-last-line"),
    pytest.param("abc\ndef\nghi\n", 8, ("def\nghi\n", 1), id="exactly"),
    # A last line longer than the limit is cut inside it, but a text's final
    # line break is no line start.
    pytest.param("x" * 100 + "\n", 10, ("x" * 9 + "\n", 0), id="one-long-line"),
    # Never inside an escape sequence: the whole sequence is kept.
    pytest.param("x" * 20 + "\x1b[31mabcdef", 8, ("\x1b[31mabcdef", 0),
                 id="escape-kept-whole"),
    pytest.param("x" * 20 + "\x1b[31mabcdef", 6, ("abcdef", 0), id="after-escape"),
])
def test_tail(text, limit, expected):
    assert tail(text, limit) == expected


@pytest.mark.parametrize(("text", "max_lines", "expected"), [
    pytest.param("a\nb\nc\n", 2, ("b\nc\n", 1), id="finished-lines"),
    pytest.param("a\nb\nc", 2, ("b\nc", 1), id="unfinished-last-line"),
    pytest.param("a\nb\n", 2, ("a\nb\n", 0), id="as-many-as-allowed"),
    pytest.param("\n" * 10, 3, ("\n" * 3, 7), id="empty-lines"),
    pytest.param("a\n" + "x" * 50, 1, ("x" * 20, 1), id="chars-cut-first"),
])
def test_tail_is_bounded_by_lines_too(text, max_lines, expected):
    assert tail(text, 20, max_lines) == expected


@pytest.mark.timeout(5)  # (a pattern tried at every position took minutes)
@pytest.mark.parametrize("text", [
    pytest.param("%|" + "a" * (1 << 20), id="one-long-line"),
    pytest.param("1%|" * (1 << 18), id="marks-without-counts"),
    pytest.param("desc: " * (1 << 18) + "5%|x", id="colons-without-a-bar"),
    pytest.param("9%|" + "|" * (1 << 20), id="bars-without-counts"),
    pytest.param("\x1bP" * (1 << 19) + "%|", id="unfinished-escapes"),
])
def test_parse_progress_is_linear_in_its_input(text):
    assert parse_progress(text) is None
    assert parse_progress(text + "\rd: 7%|#| 7/9") == {
        "done": 7, "total": 9, "message": "d"}


def test_parse_progress_reads_a_description_within_its_line_and_bounded():
    assert parse_progress("x" * 500 + ": 5%|#| 5/9")["message"] == "x" * 198
    assert parse_progress("head: 1\nnext: 5%|#| 5/9")["message"] == "next"
    assert parse_progress("a: 1%|| 1/9|b 5%|#| 5/9")["message"] is None
