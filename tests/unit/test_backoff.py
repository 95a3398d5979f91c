import pytest

from remails.backoff import exponential_delay


def test_doubles_from_base_until_the_cap() -> None:
    delays = [exponential_delay(n, base=60, cap=1800) for n in range(1, 8)]
    assert delays == [60, 120, 240, 480, 960, 1800, 1800]


def test_jitter_spreads_by_at_most_ten_percent() -> None:
    assert exponential_delay(1, base=60, cap=1800, jitter=1.0) == pytest.approx(66)
    assert exponential_delay(1, base=60, cap=1800, jitter=-1.0) == pytest.approx(54)
    assert exponential_delay(1, base=60, cap=1800, jitter=5.0) == pytest.approx(66)


def test_huge_attempt_numbers_do_not_overflow() -> None:
    assert exponential_delay(10_000, base=1, cap=30) == 30


def test_attempts_count_from_one() -> None:
    with pytest.raises(ValueError):
        exponential_delay(0, base=1, cap=2)


def test_attempt_zero_is_refused_with_a_message_naming_the_rule() -> None:
    with pytest.raises(ValueError, match=r"^attempt counts from 1$"):
        exponential_delay(0, base=1, cap=2)


def test_sub_second_and_zero_delays_are_kept() -> None:
    assert exponential_delay(1, base=0.25, cap=10) == pytest.approx(0.25)
    assert exponential_delay(3, base=0.0, cap=10, jitter=-1.0) == 0.0


def test_jitter_below_minus_one_is_clamped_to_minus_ten_percent() -> None:
    assert exponential_delay(1, base=60, cap=1800, jitter=-5.0) == pytest.approx(54)
