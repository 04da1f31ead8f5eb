"""Terminal semantics for captured output: carriage-return redraws and tqdm bars.

Progress bars (tqdm, curl, pip) redraw one line with ``\\r`` many times a
second. :class:`RedrawCollapser` keeps, of each line redrawn within one batch,
only the latest state, so the store holds one copy per batch instead of every
redraw; renderers then show the text after a line's last ``\\r`` (see
:func:`render_lines`). :func:`parse_progress` reads a tqdm bar so the status
page can draw it as the job's progress bar.
"""

from __future__ import annotations

import re
from typing import Any

# A line break, or a lone carriage return ("\r\n" is a line break: the "\r"
# sets the pending flag, the "\n" ends the line, which keeps it).
_CONTROL = re.compile(r"(\r|\n)")

_SCALE = {"": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15}

# "desc:  45%|████▌     | 45/100 [00:01<00:01, 44.5it/s]" (tqdm's default format;
# with unit_scale, counts look like "1.20k/10.0k").
_TQDM = re.compile(
    r"(?:(?P<desc>[^\r\n|]*?):\s*)?(?P<pct>\d{1,3})%\|[^|\r\n]*\|\s*"
    r"(?P<done>\d+(?:\.\d+)?)(?P<dscale>[kMGTP]?)"
    r"/(?P<total>\d+(?:\.\d+)?)(?P<tscale>[kMGTP]?)"
)


class RedrawCollapser:
    """Collapses ``\\r`` redraws in a stream of text chunks.

    ``\\r\\n`` is a newline. Within a line, only the text after the last lone
    ``\\r`` survives, prefixed with ``\\r`` so that a renderer that already
    showed an earlier state of the line (from an earlier chunk) replaces it.
    A chunk ending in ``\\r`` keeps it back until the next chunk, which may
    start with ``\\n``.
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
    the line as it is (``"\\r\\n"`` is a plain line break).

    .. code-block:: python

        screen = Screen()
        screen.feed("10%\\r50%")
        screen.feed("\\r100%\\ndone\\n")
        assert screen.text() == "100%\\ndone\\n"

    .. versionadded:: 0.1
    """

    __slots__ = ("done", "line", "pending_cr")

    def __init__(self) -> None:
        #: Finished lines, each ending with "\n", joined.
        self.done = ""
        #: The line being written.
        self.line = ""
        #: Whether a carriage return was written and the line not yet replaced.
        self.pending_cr = False

    def feed(self, text: str) -> None:
        """Apply more output."""
        if not self.pending_cr and "\r" not in text:
            # The common case, plain lines: no need to split line by line.
            cut = text.rfind("\n")
            if cut < 0:
                self.line += text
            else:
                self.done += self.line + text[: cut + 1]
                self.line = text[cut + 1 :]
            return
        finished: list[str] = []
        for piece in _CONTROL.split(text):
            if piece == "\n":
                finished.append(self.line + "\n")
                self.line = ""
                self.pending_cr = False
            elif piece == "\r":
                self.pending_cr = True
            elif piece:
                if self.pending_cr:
                    self.line = ""
                    self.pending_cr = False
                self.line += piece
        if finished:
            self.done += "".join(finished)

    def text(self) -> str:
        """Everything shown: the finished lines and the current one."""
        return self.done + self.line


def render_terminal(text: str) -> str:
    """``text`` as a terminal shows it; see :class:`Screen`.

    :param text: raw output, possibly holding carriage returns.
    :return: the output with each line in its latest state.
    """
    screen = Screen()
    screen.feed(text)
    return screen.text()


def _latest(line: str, mark: str) -> str:
    # The last non-empty state of a redrawn line; ``mark`` (a "\r") in front
    # when it overwrote something, so a renderer replaces what it showed.
    states = line.split("\r")
    for k in range(len(states) - 1, -1, -1):
        if states[k]:
            return (mark if k else "") + states[k]
    return ""  # only carriage returns: nothing was overwritten


def parse_progress(text: str) -> dict[str, Any] | None:
    """The last tqdm-style bar in ``text`` as ``{"done", "total", "message"}``,
    or ``None`` if there is none."""
    matches = list(_TQDM.finditer(text))
    if not matches:
        return None
    last = matches[-1]
    done = float(last["done"]) * _SCALE[last["dscale"]]
    total = float(last["total"]) * _SCALE[last["tscale"]]
    if total <= 0:
        return None
    desc = (last["desc"] or "").strip()
    return {
        "done": int(done) if done.is_integer() else done,
        "total": int(total) if total.is_integer() else total,
        "message": desc or None,
    }
