"""required_type: the event type a trigger's filters pin, by which the bus looks triggers up."""

from remails.bus.filters import required_type


def test_a_top_level_exact_type_is_the_required_type() -> None:
    assert required_type([{"exact": {"type": "message.routed", "outboundip": "1"}}]) == "message.routed"
    assert required_type([{"prefix": {"id": "x"}}, {"exact": {"type": "tick"}}]) == "tick"


def test_filters_that_allow_several_types_pin_none() -> None:
    assert required_type([]) is None
    assert required_type([{"prefix": {"type": "message."}}]) is None
    assert required_type([{"exact": {"source": "edge"}}]) is None
    assert required_type([{"any": [{"exact": {"type": "a"}}, {"exact": {"type": "b"}}]}]) is None
    assert required_type([{"not": {"exact": {"type": "a"}}}]) is None
