import pytest

from remails.bus.filters import matches

ROUTED = {"type": "message.routed", "source": "/remails/route", "outboundip": "127.0.0.2"}


def test_exact_matches_type_and_extension() -> None:
    assert matches([{"exact": {"type": "message.routed", "outboundip": "127.0.0.2"}}], ROUTED)
    assert not matches([{"exact": {"type": "message.routed", "outboundip": "127.0.0.3"}}], ROUTED)


def test_missing_attribute_never_matches() -> None:
    assert not matches([{"exact": {"orgid": "x"}}], ROUTED)


def test_prefix_suffix_any_all_not() -> None:
    assert matches([{"prefix": {"type": "message."}}], ROUTED)
    assert matches([{"suffix": {"type": ".routed"}}], ROUTED)
    assert matches([{"any": [{"exact": {"type": "tick"}}, {"exact": {"type": "message.routed"}}]}], ROUTED)
    assert not matches([{"all": [{"prefix": {"type": "message."}}, {"exact": {"type": "tick"}}]}], ROUTED)
    assert matches([{"not": {"exact": {"type": "tick"}}}], ROUTED)


def test_a_list_needs_every_filter_and_empty_matches_all() -> None:
    assert matches([], ROUTED)
    assert not matches([{"prefix": {"type": "message."}}, {"exact": {"outboundip": "10.0.0.1"}}], ROUTED)


def test_unknown_dialect_is_an_error_not_a_silent_match() -> None:
    with pytest.raises(ValueError, match="cesql"):
        matches([{"cesql": "type = 'x'"}], ROUTED)
