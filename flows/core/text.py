"""Text from outside the flow made safe to show: one line, no control characters, bounded in length."""

from __future__ import annotations

MAX_REASON_CHARS = 1_000


def cut(text: str, limit: int = MAX_REASON_CHARS) -> str:
    """`text` on one line, with no control characters and at most `limit` characters: what a reason may
    cost on a console or a topic. A control character (an ANSI escape's ESC, say) is written as its escape
    (`\\x1b`): text from a message must not drive the terminal that shows it. Cutting twice changes
    nothing."""
    if len(text) > 4 * limit:
        text = text[: 4 * limit]  # bound the cost of the split below, too
    text = " ".join(text.split())
    if not text.isprintable():  # rare: the check runs at C speed, the escaping below does not
        text = "".join(char if char.isprintable() else _escaped(char) for char in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _escaped(char: str) -> str:
    """A character that is not printable as its Python escape (`\\x1b`, `\\u200b`)."""
    return char.encode("unicode_escape").decode("ascii")
