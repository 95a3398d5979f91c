"""RFC 6531 at the edge: which addresses need SMTPUTF8, and which UTF-8 addresses are refused."""

from remails_smtp_edge.policy import BAD_UTF8_ADDRESS, UTF8_NEEDS_SMTPUTF8, check_address_charset


def test_ascii_addresses_pass_with_or_without_smtputf8() -> None:
    assert check_address_charset("user@example.test", smtputf8=False) is None
    assert check_address_charset("user@example.test", smtputf8=True) is None


def test_a_utf8_address_without_smtputf8_is_refused_with_553_5_6_7() -> None:
    reply = check_address_charset("josé@example.test", smtputf8=False)
    assert reply == UTF8_NEEDS_SMTPUTF8
    assert str(reply).startswith("553 5.6.7 ")


def test_a_well_formed_utf8_address_with_smtputf8_is_accepted() -> None:
    assert check_address_charset("josé@bücher.example", smtputf8=True) is None


def test_undecodable_bytes_are_refused_with_553_5_1_3() -> None:
    # Bytes that are not UTF-8 reach the handler as lone surrogates.
    address = b"jos\xe9@example.test".decode("utf-8", "surrogateescape")
    reply = check_address_charset(address, smtputf8=True)
    assert reply == BAD_UTF8_ADDRESS
    assert str(reply).startswith("553 5.1.3 ")
