"""The From fast path (`_simple_from`) gives exactly the full parser's addresses, or declines.

It decides which domain a tenant's message claims to be from, so for every value it accepts
the result must equal the parser's field by field; anything unusual must go to the parser.
"""

from __future__ import annotations

import string
from email.headerregistry import Address

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from remails.sending_policy import _parsed_from, _simple_from, from_addresses

ALNUM = string.ascii_letters + string.digits
ATEXT = ALNUM + "!#$%&'*+/=?^_`{|}~-"
# What could turn a plain value into another shape: RFC 5322 specials, white space, the
# encoded-word markers, control and non-ASCII characters.
SPECIALS = ' \t\r\n."(),:;<>@[\\]=?-\x00\x7f\x1c\x85\xa0é\u2028\uff20'

HOSTILE = [
    "a@b.test <c@d.test>",
    '"x@evil.test" <a@good.test>',
    "a@good.test (comment) <b@evil.test>",
    "a@good.test (comment)",
    "Name <a@good.test>, b@evil.test",
    "a@good.test, b@evil.test",
    "=?utf-8?q?x?= <a@b.test>",
    "=?utf-8?q?evil?=@b.test",
    "a.=?utf-8?q?evil?=@b.test",
    "Name <=?utf-8?q?x?=@b.test>",
    "a@b.test\r\n <c@d.test>",
    "a@b.test <c@d.test>",
    "< a@b.test>",
    "<a@b.test >",
    "Name<a@b.test>",
    "<<a@b.test>>",
    "<a@b.test",
    "a@-b.test",
    "a@b-.test",
    "a..b@c.test",
    ".a@c.test",
    "a.@c.test",
    "a@b..test",
    "a@b.test.",
    "a@.b.test",
    "a@good.test@evil.test",
    "Name <a@good.test",
    "Name a@good.test>",
    "Name  <a@good.test>",
    "Name <a@good.test> ",
    " a@good.test",
    "Na.me <a@good.test>",
    "Name <a@good.test>x",
    "group: a@good.test;",
    "undisclosed:;",
    "a\\@evil.test@good.test",
    "a@[127.0.0.1]",
    "a@good.test\n",
    "a@good.test\x00",
    "Émile <a@good.test>",
    "a@gööd.test",
    "a@good\uff0etest",
    "a\uff20good.test",
    "Name <a@good.test> <b@evil.test>",
    "",
]


def _fields(addresses: list[Address]) -> list[tuple[str, str, str, str, str]]:
    return [(a.display_name, a.username, a.domain, a.addr_spec, str(a)) for a in addresses]


def _agrees(value: str) -> bool:
    """Whether the fast path took `value`; when it did, its result is the parser's."""
    fast = _simple_from(value)
    if fast is None:
        return False
    slow = _parsed_from(value)
    assert isinstance(slow, list), (value, slow)
    assert fast == slow and _fields(fast) == _fields(slow), value
    return True


def test_the_common_shapes_take_the_fast_path() -> None:
    for value in (
        "alice@example.test",
        "<alice@example.test>",
        "Alice Example <alice@example.test>",
        "A <a.b+c@x-y.z9>",
    ):
        assert _agrees(value), value


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_near_misses_go_to_the_parser(value: str) -> None:
    assert _simple_from(value) is None
    block = b"From: " + value.encode() + b"\r\nSubject: hi"
    assert from_addresses(block) == _parsed_from(value.strip())


def test_a_folded_value_is_judged_as_the_parser_judges_it() -> None:
    block = b"From: a@b.test\r\n <c@d.test>\r\nSubject: hi"
    assert from_addresses(block) == _parsed_from("a@b.test <c@d.test>")
    assert isinstance(from_addresses(block), str)
    # Folding inside an otherwise plain value: both paths see the same unfolded text.
    folded = from_addresses(b"From: Alice Example\r\n <alice@example.test>")
    assert folded == [Address("Alice Example", "alice", "example.test")]


_atoms = st.lists(st.text(ATEXT, min_size=1, max_size=8), min_size=1, max_size=3)
_labels = st.lists(
    st.from_regex(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,6}[A-Za-z0-9])?", fullmatch=True),
    min_size=1,
    max_size=4,
)
_name = st.lists(st.text(ALNUM, min_size=1, max_size=8), min_size=1, max_size=3)


@st.composite
def _shape(draw: st.DrawFn) -> str:
    # "=?" could open an encoded word: such values are meant for the parser, not a common shape.
    local = ".".join(draw(_atoms))
    assume("=?" not in local)
    addr = local + "@" + ".".join(draw(_labels))
    form = draw(st.sampled_from(["bare", "angle", "named"]))
    if form == "named":
        return f"{' '.join(draw(_name))} <{addr}>"
    return f"<{addr}>" if form == "angle" else addr


@st.composite
def _near_miss(draw: st.DrawFn) -> str:
    """A common shape with a few characters inserted, replaced or deleted."""
    value = draw(_shape())
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(value)))
        char = draw(st.sampled_from(SPECIALS) | st.sampled_from(ATEXT) | st.characters())
        edit = draw(st.sampled_from(["insert", "replace", "delete"]))
        tail = value[at + 1 :] if edit != "insert" else value[at:]
        value = value[:at] + ("" if edit == "delete" else char) + tail
    return value


_SETTINGS = settings(max_examples=1500, database=None, derandomize=True, deadline=None)


@_SETTINGS
@given(_shape())
def test_every_common_shape_takes_the_fast_path_with_the_parsers_result(value: str) -> None:
    assert _agrees(value)


@_SETTINGS
@given(_near_miss())
def test_near_misses_decline_or_agree_with_the_parser(value: str) -> None:
    _agrees(value)


@_SETTINGS
@given(st.text(st.sampled_from(ATEXT + SPECIALS), max_size=30))
def test_arbitrary_text_declines_or_agrees_with_the_parser(value: str) -> None:
    _agrees(value)
