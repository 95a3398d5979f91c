"""Human accounts: Argon2id passwords, TOTP two-factor, recovery codes, CSRF tokens, throttling.

Everything here is a plain function of its inputs (plus the random source); the dashboard and
the CLI store the results through `remails.db.users` and `remails.db.sessions`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from remails.crypto import generate_secret

__all__ = [
    "MIN_PASSWORD_LENGTH",
    "RECOVERY_CODES",
    "csrf_matches",
    "csrf_token",
    "generate_password",
    "hash_password",
    "new_recovery_codes",
    "new_totp_secret",
    "normalise_code",
    "normalise_email",
    "password_problem",
    "throttled",
    "totp_step",
    "totp_uri",
    "verify_password",
]

MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024  # Argon2 hashes anything; a limit keeps a request's cost bounded
RECOVERY_CODES = 10

_hasher = PasswordHasher()  # argon2-cffi's defaults: Argon2id, RFC 9106 low-memory profile


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored: str | None, password: str) -> bool:
    """Constant work whether or not the account exists (`stored` None hashes a dummy)."""
    if stored is None or len(password) > MAX_PASSWORD_LENGTH:
        _hasher.hash(password[:MAX_PASSWORD_LENGTH])
        return False
    try:
        return _hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False


def password_problem(password: str) -> str | None:
    """Why a new password is refused, or None."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"the password needs at least {MIN_PASSWORD_LENGTH} characters"
    if len(password) > MAX_PASSWORD_LENGTH:
        return f"the password may have at most {MAX_PASSWORD_LENGTH} characters"
    return None


def generate_password() -> str:
    """A password for `remails user create`/`reset-password`: 144 bits, shown once."""
    return generate_secret(18)


def normalise_email(email: str) -> str:
    return email.strip().lower()


def new_totp_secret() -> str:
    return pyotp.random_base32()


def totp_uri(secret: str, email: str, issuer: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=email, issuer_name=issuer)


def totp_step(secret: str, code: str, last_step: int | None, now: float | None = None) -> int | None:
    """The time step `code` belongs to (this one or its neighbours, for clock drift), or None
    when it is wrong or was already used (steps at or before `last_step` are spent)."""
    code = normalise_code(code)
    if len(code) != 6 or not code.isdigit():
        return None
    totp = pyotp.TOTP(secret)
    moment = time.time() if now is None else now
    current = int(moment) // totp.interval
    for step in (current - 1, current, current + 1):
        if hmac.compare_digest(totp.generate_otp(step), code) and (last_step is None or step > last_step):
            return step
    return None


def normalise_code(code: str) -> str:
    return "".join(code.split()).replace("-", "").lower()


def new_recovery_codes() -> list[str]:
    """Ten one-time codes `xxxxx-xxxxx` (50 bits each), shown once, stored as digests."""
    alphabet = "abcdefghjkmnpqrstuvwxyz23456789"
    codes = []
    for _ in range(RECOVERY_CODES):
        raw = "".join(secrets.choice(alphabet) for _ in range(10))
        codes.append(f"{raw[:5]}-{raw[5:]}")
    return codes


def csrf_token(session_token: str) -> str:
    """The form token of a session: derived from its secret, so it needs no storage and a page
    of another origin (which cannot read the HttpOnly cookie) cannot compute it."""
    return hmac.new(session_token.encode(), b"remails-csrf", hashlib.sha256).hexdigest()


def csrf_matches(session_token: str, submitted: str | None) -> bool:
    return submitted is not None and hmac.compare_digest(csrf_token(session_token), submitted)


def throttled(failures_for_account: int, failures_from_client: int, max_failures: int) -> bool:
    """Sign-in is refused (even with the right password) once an account has had `max_failures`
    wrong attempts in the window, or one client address four times as many across accounts."""
    return failures_for_account >= max_failures or failures_from_client >= 4 * max_failures
