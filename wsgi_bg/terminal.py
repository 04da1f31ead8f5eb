"""Terminal semantics for captured output: carriage returns, tqdm bars, ANSI styles.

Progress bars (tqdm, curl, pip) redraw one line with ``\\r`` many times a
second. :class:`RedrawCollapser` keeps, of each line redrawn within one batch,
only the latest state, so the store holds one copy per batch instead of every
redraw. :class:`Screen` turns output into what a terminal shows: the text
after a line's last ``\\r``, with ANSI SGR styles (colours, bold, dim, italic,
underline, strike) as a fixed set of class names, and every other escape
sequence dropped. :func:`parse_progress` reads a tqdm bar so the status page
can draw it as the job's progress bar.

The status page's script (``status/static/status.js``) implements the same
rules for output that arrives live; the tests feed both the same chunks.
"""

from __future__ import annotations

import re
from typing import Any

# An escape sequence. ESC followed by something that is no sequence matches
# alone (and is dropped). An OSC string (window titles, hyperlinks) ends at BEL
# or ST, or at the end of the line.
_ESCAPE = (r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b\r\n]*(?:\x07|\x1b\\)?"
           r"|[PX^_][^\x1b]*\x1b\\|[ -/]*[0-~])?")
_ESCAPES = re.compile(_ESCAPE)
# A line break, a lone carriage return, or an escape sequence.
_TOKEN = re.compile(rf"(\r|\n|{_ESCAPE})")
# The unfinished start of an escape sequence at the end of a chunk: kept back
# until the next chunk completes it.
_PARTIAL = re.compile(
    r"\x1b(?:\[[0-?]*[ -/]*|\][^\x07\x1b\r\n]*\x1b?|[PX^_][^\x1b]*\x1b?|[ -/]*)?\Z"
)
_SGR = re.compile(r"\x1b\[([0-9;:]*)m\Z")

_SCALE = {"": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15}

# "desc:  45%|████▌     | 45/100 [00:01<00:01, 44.5it/s]" (tqdm's default format;
# with unit_scale, counts look like "1.20k/10.0k"). Matched at a "%|" found by
# str.rfind: no pattern here is searched at every position of the output, and
# none can backtrack over more than one run of characters (a job's output is
# whatever it prints, and this runs in the supervisor).
_COUNTS = re.compile(
    r"[^|\r\n]*\|\s*"
    r"(?P<done>\d+(?:\.\d+)?)(?P<dscale>[kMGTP]?)"
    r"/(?P<total>\d+(?:\.\d+)?)(?P<tscale>[kMGTP]?)"
)
#: Characters of a bar's description read, back from its percentage.
_DESC_CHARS = 200

#: A run of text in one style: ``(classes, text)``; ``classes`` is ``""`` or
#: space-separated names from :data:`STYLE_CLASSES`.
Segment = tuple[str, str]

#: Every class name a :class:`Screen` may produce: ``fg-0`` … ``fg-255`` and
#: ``bg-0`` … ``bg-255`` (the xterm palette; 0-15 are themed by the page's
#: style sheet), and ``a-b`` bold, ``a-d`` dim, ``a-i`` italic, ``a-u``
#: underline, ``a-s`` strike.
STYLE_CLASSES = frozenset(
    [f"fg-{n}" for n in range(256)] + [f"bg-{n}" for n in range(256)]
    + ["a-b", "a-d", "a-i", "a-u", "a-s"]
)

_ATTRS = {1: ("b", True), 2: ("d", True), 3: ("i", True), 4: ("u", True),
          9: ("s", True), 22: ("bd", False), 23: ("i", False), 24: ("u", False),
          29: ("s", False)}


def _cube(value: int) -> int:
    """The nearest of the xterm colour cube's six levels (0, 95, 135, ...)."""
    return 0 if value < 48 else 1 if value < 115 else (value - 35) // 40


def rgb_to_256(red: int, green: int, blue: int) -> int:
    """The xterm-256 palette index nearest to a 24-bit colour."""
    red, green, blue = (min(max(c, 0), 255) for c in (red, green, blue))
    if red == green == blue:  # the grey ramp, 232-255, or black and white
        if red < 8:
            return 16
        if red > 248:
            return 231
        return 232 + round((red - 8) / 247 * 24) if red < 238 else 255
    return 16 + 36 * _cube(red) + 6 * _cube(green) + _cube(blue)


class Style:
    """The SGR state of a terminal: colours and attributes, as class names."""

    __slots__ = ("fg", "bg", "attrs", "classes")

    def __init__(self) -> None:
        self.fg: int | None = None
        self.bg: int | None = None
        self.attrs: set[str] = set()
        self.classes = ""

    def apply(self, params: str) -> None:
        """Apply the parameters of one ``ESC [ … m`` sequence."""
        codes = [int(p) if p.isdigit() else 0
                 for p in params.replace(":", ";").split(";")] if params else [0]
        i = 0
        while i < len(codes):
            code = codes[i]
            i += 1
            if code == 0:
                self.fg = self.bg = None
                self.attrs.clear()
            elif code in _ATTRS:
                names, on = _ATTRS[code]
                for name in names:
                    if on:
                        self.attrs.add(name)
                    else:
                        self.attrs.discard(name)
            elif 30 <= code <= 37:
                self.fg = code - 30
            elif 90 <= code <= 97:
                self.fg = code - 90 + 8
            elif 40 <= code <= 47:
                self.bg = code - 40
            elif 100 <= code <= 107:
                self.bg = code - 100 + 8
            elif code == 39:
                self.fg = None
            elif code == 49:
                self.bg = None
            elif code in (38, 48):
                colour = None
                if i < len(codes) and codes[i] == 5 and i + 1 < len(codes):
                    colour = codes[i + 1] if codes[i + 1] < 256 else None
                    i += 2
                elif i < len(codes) and codes[i] == 2 and i + 3 < len(codes):
                    colour = rgb_to_256(*codes[i + 1 : i + 4])
                    i += 4
                else:
                    i = len(codes)  # malformed: ignore the rest
                if colour is not None:
                    if code == 38:
                        self.fg = colour
                    else:
                        self.bg = colour
            # Anything else (blink, inverse, fonts...) is ignored.
        colours = [f"{kind}-{n}" for kind, n in (("fg", self.fg), ("bg", self.bg))
                   if n is not None]
        self.classes = " ".join(colours + [f"a-{a}" for a in sorted(self.attrs)])


class RedrawCollapser:
    """Collapses ``\\r`` redraws in a stream of text chunks.

    ``\\r\\n`` is a newline. Within a line, only the text after the last lone
    ``\\r`` survives, prefixed with ``\\r`` so that a renderer that already
    showed an earlier state of the line (from an earlier chunk) replaces it.
    The escape sequences of the states dropped are kept, so the styles they
    set still apply. A chunk ending in ``\\r`` keeps it back until the next
    chunk, which may start with ``\\n``.
    """

    def __init__(self) -> None:
        self._carry = ""

    def feed(self, text: str, final: bool = False) -> str:
        text = self._carry + text
        self._carry = ""
        if text.endswith("\r") and not final:
            text, self._carry = text[:-1], "\r"
        if "\r" not in text:
            return text
        text = text.replace("\r\n", "\n")
        lines = text.split("\n")
        for i, line in enumerate(lines):
            if "\r" in line:
                lines[i] = _latest(line, "\r")
        return "\n".join(lines)


class Screen:
    """What a terminal shows of some output, fed piece by piece.

    ``"\\n"`` ends the current line. A lone ``"\\r"`` returns to the start of
    the line: the next text written replaces the line (so a redrawn progress
    bar shows only its latest state), while a ``"\\n"`` right after it keeps
    the line as it is (``"\\r\\n"`` is a plain line break). ANSI SGR sequences
    (``ESC [ … m``) set the style of the text that follows, across lines;
    every other escape sequence is dropped. A sequence cut at the end of a
    piece waits for the next piece.

    .. code-block:: python

        screen = Screen()
        screen.feed("10%\\r50%")
        screen.feed("\\r100%\\n\\x1b[32mdone\\x1b[0m\\n")
        assert screen.text() == "100%\\ndone\\n"
        assert screen.lines[1] == [("fg-2", "done")]

    .. versionadded:: 0.1
    """

    __slots__ = ("lines", "line", "pending_cr", "style", "_carry")

    def __init__(self) -> None:
        #: Finished lines, each a list of :data:`Segment` (without the "\n").
        self.lines: list[list[Segment]] = []
        #: The line being written.
        self.line: list[Segment] = []
        #: Whether a carriage return was written and the line not yet replaced.
        self.pending_cr = False
        #: The style of the text written next.
        self.style = Style()
        self._carry = ""

    def feed(self, text: str) -> None:
        """Apply more output."""
        if self._carry:
            text = self._carry + text
            self._carry = ""
        if "\x1b" in text:
            partial = _PARTIAL.search(text)
            if partial is not None:
                text, self._carry = text[: partial.start()], text[partial.start() :]
        if not self.pending_cr and "\r" not in text and "\x1b" not in text:
            # The common case, plain lines: no need to split token by token.
            pieces = text.split("\n")
            classes = self.style.classes
            for piece in pieces[:-1]:
                if piece:
                    self.line.append((classes, piece))
                self.lines.append(self.line)
                self.line = []
            if pieces[-1]:
                self.line.append((classes, pieces[-1]))
            return
        for piece in _TOKEN.split(text):
            if not piece:
                continue
            if piece == "\n":
                self.lines.append(self.line)
                self.line = []
                self.pending_cr = False
            elif piece == "\r":
                self.pending_cr = True
            elif piece[0] == "\x1b":
                sgr = _SGR.match(piece)
                if sgr is not None:
                    self.style.apply(sgr.group(1))
            else:
                if self.pending_cr:
                    self.line = []
                    self.pending_cr = False
                self.line.append((self.style.classes, piece))

    @property
    def unfinished(self) -> str:
        """An escape sequence cut at the end of the last piece, held back."""
        return self._carry

    def all_lines(self) -> list[list[Segment]]:
        """The finished lines, and the current one when it holds text."""
        return self.lines + [self.line] if self.line else list(self.lines)

    def text(self) -> str:
        """Everything shown, as plain text: the finished lines and the
        current one."""
        done = "".join("".join(t for _, t in line) + "\n" for line in self.lines)
        return done + "".join(t for _, t in self.line)


def strip_escapes(text: str) -> str:
    """``text`` without its escape sequences (colours and the rest)."""
    return _ESCAPES.sub("", text) if "\x1b" in text else text


def render_terminal(text: str) -> str:
    """``text`` as a terminal shows it, without styles; see :class:`Screen`.

    :param text: raw output, possibly holding carriage returns and escape
        sequences.
    :return: the output with each line in its latest state.
    """
    screen = Screen()
    screen.feed(text)
    return screen.text()


def tail(
    text: str, limit: int, max_lines: int | None = None
) -> tuple[str, int]:
    """``(end, skipped_lines)``: the end of ``text``, at most ``limit``
    characters and ``max_lines`` lines from the start of a line, and how
    many lines come before it. Where the last line alone is longer than
    ``limit``, it is cut inside that line but never inside an escape
    sequence (the whole sequence is kept).

    What a job's page draws of a long output: a page's cost is then bounded
    by ``limit`` and ``max_lines``, whatever the output holds (each line is
    a row of markup, empty or not).
    """
    cut = 0
    if len(text) > limit:
        # (A line break ending the text starts no line worth showing.)
        cut = text.find("\n", len(text) - limit - 1, len(text) - 1) + 1
        if cut == 0:  # no line starts within the window
            cut = len(text) - limit
            unfinished = _PARTIAL.search(text, max(0, cut - 256), cut)
            if unfinished is not None:
                cut = unfinished.start()
    if max_lines is not None:
        # The start of the last max_lines lines, if more follow the cut.
        end = len(text) - 1 if text.endswith("\n") else len(text)
        for _ in range(max_lines):
            end = text.rfind("\n", cut, end)
            if end < 0:
                break
        else:
            cut = end + 1
    if cut == 0:
        return text, 0
    return text[cut:], text.count("\n", 0, cut)


def _latest(line: str, mark: str) -> str:
    # The last non-empty state of a redrawn line; ``mark`` (a "\r") in front
    # when it overwrote something, so a renderer replaces what it showed. The
    # escape sequences of the states dropped go before it: a colour set there
    # still applies.
    states = line.split("\r")
    for k in range(len(states) - 1, -1, -1):
        if states[k] and strip_escapes(states[k]):
            kept = "".join(
                "".join(_ESCAPES.findall(s)) for s in states[:k] if "\x1b" in s
            )
            return kept + (mark if k else "") + states[k]
    # Only carriage returns and escapes: nothing was overwritten.
    return "".join("".join(_ESCAPES.findall(s)) for s in states if "\x1b" in s)


def parse_progress(text: str) -> dict[str, Any] | None:
    """The last tqdm-style bar in ``text`` as ``{"done", "total", "message"}``,
    or ``None`` if there is none. Colours around the bar are ignored.

    Linear in ``text``: each ``%|`` is looked at once, from the last, and a
    description is read back at most 200 characters within its line.
    """
    text = strip_escapes(text)
    end = len(text)
    while (bar := text.rfind("%|", 0, end)) > 0:
        end = bar
        digits = bar
        while digits > max(0, bar - 3) and text[digits - 1] in "0123456789":
            digits -= 1
        counts = _COUNTS.match(text, bar + 2) if digits < bar else None
        if counts is None:
            continue
        done = float(counts["done"]) * _SCALE[counts["dscale"]]
        total = float(counts["total"]) * _SCALE[counts["tscale"]]
        if total <= 0:
            return None
        return {
            "done": int(done) if done.is_integer() else done,
            "total": int(total) if total.is_integer() else total,
            "message": _description(text, digits),
        }
    return None


def _description(text: str, end: int) -> str | None:
    # "desc: " before a bar's percentage, within its line (or since a "|").
    start = max(0, end - _DESC_CHARS)
    start = max(start, *(text.rfind(c, start, end) + 1 for c in "\r\n|"))
    before = text[start:end].rstrip()
    if not before.endswith(":"):
        return None
    return before[:-1].strip() or None
