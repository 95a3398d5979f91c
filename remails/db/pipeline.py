"""Message state transitions of the delivery pipeline.

Each step reads what it needs in one query and moves the message in one statement guarded by
the state it expects (a CTE where several tables change together, so no transaction spans a
round trip). Zero rows is a normal answer — another handler or a duplicate event moved the
message first — and callers then do nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

import asyncpg

from remails.db.rows import Executor

__all__ = [
    "BLOCKED_REASON",
    "AttemptRecord",
    "Attempted",
    "Claimed",
    "IntakeDecision",
    "IntakeResult",
    "MessageKey",
    "MessageRow",
    "Outcome",
    "RecipientRow",
    "SenderFinish",
    "ToIntake",
    "ToRoute",
    "ToValidate",
    "admit",
    "advance",
    "apply_intake",
    "apply_outcomes",
    "apply_validation",
    "claim_for_sending",
    "claim_many_for_sending",
    "extend_lease",
    "finish_sending",
    "hold_blocked",
    "load_attempted_many",
    "load_message",
    "load_to_intake",
    "load_to_route",
    "load_to_validate",
    "record_destination",
    "release_node_leases",
    "set_route",
    "warm_up",
]


@dataclass(frozen=True)
class MessageRow:
    id: UUID
    organization_id: UUID
    project_id: UUID
    status: str
    mail_from: str
    message_id_header: str
    outbound_ip: str | None
    attempts: int
    expires_at: datetime
    reason: str | None


@dataclass(frozen=True)
class RecipientRow:
    id: int
    address: str
    domain: str
    status: str
    last_code: int | None
    last_enhanced: str | None
    last_text: str | None


@dataclass(frozen=True)
class MessageKey:
    id: UUID
    organization_id: UUID
    project_id: UUID


_MESSAGE = """
SELECT id, organization_id, project_id, status::text, mail_from, message_id_header,
       host(outbound_ip) AS outbound_ip, attempts, expires_at, reason
  FROM messages WHERE id = $1
"""


async def load_message(conn: Executor, message_id: UUID) -> MessageRow | None:
    row = await conn.fetchrow(_MESSAGE, message_id)
    return MessageRow(**row) if row else None


# advance: expected → new, only if the message is still in one of the expected states.
_ADVANCE = """
UPDATE messages
   SET status = $3::message_status, reason = COALESCE($4, reason), updated_at = now(),
       finished_at = CASE WHEN $3::text IN ('delivered', 'bounced', 'failed', 'rejected') THEN now() END
 WHERE id = $1 AND status = ANY($2::message_status[])
RETURNING id
"""


async def advance(
    conn: Executor, message_id: UUID, expected: Sequence[str], new: str, reason: str | None = None
) -> bool:
    return await conn.fetchval(_ADVANCE, message_id, list(expected), new, reason) is not None


# -- moderation -------------------------------------------------------------------------------

BLOCKED_REASON = "sending is blocked for this organization"

# Every transition below moves a message only while `organization_may_send`; when one finds
# nothing to move, its handler calls hold_blocked: the expected state → held, remembering
# that state (resume_status) so lifting the block resumes the message where it stopped.
_HOLD_BLOCKED = """
WITH m AS (
    UPDATE messages SET status = 'held', resume_status = status, reason = $3, updated_at = now()
     WHERE id = $1 AND status = ANY($2::message_status[]) AND NOT organization_may_send(organization_id)
    RETURNING id
)
SELECT enqueue_webhooks(id, 'message.held') FROM m
"""


async def hold_blocked(conn: Executor, message_id: UUID, expected: Sequence[str]) -> int | None:
    """Hold the message if its organization is blocked; None when it was not held (not in an
    expected state, or not blocked), else how many webhooks were queued."""
    queued: int | None = await conn.fetchval(_HOLD_BLOCKED, message_id, list(expected), BLOCKED_REASON)
    return queued


# -- validate ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToValidate:
    key: MessageKey
    status: str
    mail_from: str
    head: bytes
    recipients: list[str]
    suppressed: set[str]
    verified_domains: list[str]


# The whole header block, however long (up to the first empty line; all of it without one):
# a header field placed late counts as much as an early one.
_TO_VALIDATE = """
SELECT m.id, m.organization_id, m.project_id, m.status::text, m.mail_from,
       substring(m.raw FROM 1 FOR COALESCE(NULLIF(position('\\x0d0a0d0a'::bytea IN m.raw), 0) + 1,
                                            octet_length(m.raw))) AS head,
       ARRAY(SELECT r.address FROM recipients r WHERE r.message_id = m.id ORDER BY r.id) AS recipients,
       ARRAY(SELECT s.address FROM recipients r JOIN suppressions s
                ON s.organization_id = m.organization_id AND s.address = lower(r.address)
              WHERE r.message_id = m.id) AS suppressed,
       ARRAY(SELECT d.name FROM domains d JOIN domain_projects dp ON dp.domain_id = d.id
              WHERE dp.project_id = m.project_id AND d.verified_at IS NOT NULL) AS verified
  FROM messages m WHERE m.id = $1
"""


async def load_to_validate(conn: Executor, message_id: UUID) -> ToValidate | None:
    row = await conn.fetchrow(_TO_VALIDATE, message_id)
    if row is None:
        return None
    return ToValidate(
        MessageKey(row["id"], row["organization_id"], row["project_id"]),
        row["status"],
        row["mail_from"],
        bytes(row["head"]),
        list(row["recipients"]),
        set(row["suppressed"]),
        list(row["verified"]),
    )


# apply_validation: received → validated or rejected, suppressed recipients marked, at once.
_VALIDATED = """
WITH m AS (
    UPDATE messages SET status = $2::message_status, reason = $3, updated_at = now(),
           finished_at = CASE WHEN $2::text = 'rejected' THEN now() END
     WHERE id = $1 AND status = 'received' AND organization_may_send(organization_id)
    RETURNING id
), r AS (
    UPDATE recipients SET status = 'suppressed', last_text = 'address is on the suppression list',
           updated_at = now()
     WHERE message_id IN (SELECT id FROM m) AND lower(address) = ANY($4::text[])
    RETURNING 1
)
-- The WHERE makes the recipients' update run before the webhooks read them.
SELECT CASE WHEN $2::text = 'rejected' THEN enqueue_webhooks(m.id, 'message.rejected') ELSE 0 END
     + CASE WHEN cardinality($4::text[]) > 0 THEN enqueue_webhooks(m.id, 'message.suppressed') ELSE 0 END
  FROM m WHERE (SELECT count(*) FROM r) >= 0
"""


async def apply_validation(
    conn: Executor, message_id: UUID, suppressed: Sequence[str], reject_reason: str | None
) -> int | None:
    """None when the message was not `received`; else how many webhooks were queued."""
    status = "validated" if reject_reason is None else "rejected"
    suppressed_lower = [a.lower() for a in suppressed]
    queued: int | None = await conn.fetchval(_VALIDATED, message_id, status, reject_reason, suppressed_lower)
    return queued


# -- quota ------------------------------------------------------------------------------------

# admit: count the message against its organization's monthly quota, atomically. The message
# row is locked first (a duplicate waits, then finds it moved); the organization row is
# updated under its own lock with the quota re-checked, so concurrent messages never
# over-count. A quota period that started before this month is reset here. Crossing 80 % or
# 100 % writes the organization's notification in the same statement.
_ADMIT = """
WITH m AS (
    SELECT id, organization_id FROM messages
     WHERE id = $1 AND status = 'validated' AND organization_may_send(organization_id) FOR UPDATE
), counted AS (
    UPDATE organizations o
       SET quota_used = CASE WHEN o.quota_period_start < date_trunc('month', now())::date
                             THEN 1 ELSE o.quota_used + 1 END,
           quota_period_start = date_trunc('month', now())::date, updated_at = now()
      FROM m
     WHERE o.id = m.organization_id
       AND (o.quota_period_start < date_trunc('month', now())::date OR o.quota_used < o.monthly_quota)
    RETURNING o.id, o.quota_used, o.monthly_quota, o.quota_period_start
), noticed AS (
    -- quota.warning at 80 %, quota.exhausted at 100 %: once a month each (the once-key).
    INSERT INTO notifications (organization_id, kind, message, details, once_key)
    SELECT c.id, k.kind,
           'Monthly quota: ' || c.quota_used || ' of ' || c.monthly_quota || ' messages used'
             || CASE WHEN k.kind = 'quota.exhausted' THEN '; further messages are held' ELSE '' END,
           jsonb_build_object('used', c.quota_used, 'limit', c.monthly_quota,
                              'month', to_char(c.quota_period_start, 'YYYY-MM')),
           to_char(c.quota_period_start, 'YYYY-MM')
      FROM counted c, (VALUES ('quota.warning'), ('quota.exhausted')) AS k(kind)
     WHERE CASE k.kind WHEN 'quota.warning' THEN c.quota_used * 5 >= c.monthly_quota * 4
                                                  AND c.quota_used < c.monthly_quota
                       ELSE c.quota_used >= c.monthly_quota END
    ON CONFLICT (organization_id, kind, once_key) WHERE once_key IS NOT NULL DO NOTHING
), moved AS (
    UPDATE messages
       SET status = CASE WHEN EXISTS (SELECT 1 FROM counted) THEN 'admitted'::message_status
                         ELSE 'held'::message_status END,
           reason = CASE WHEN EXISTS (SELECT 1 FROM counted) THEN NULL ELSE 'monthly quota used up' END,
           updated_at = now()
      FROM m WHERE messages.id = m.id
    RETURNING messages.id, messages.status::text
)
SELECT status, CASE WHEN status = 'held' THEN enqueue_webhooks(id, 'message.held') ELSE 0 END AS webhooks
  FROM moved
"""


async def admit(conn: Executor, message_id: UUID) -> tuple[str, int] | None:
    """validated → admitted when quota is left, else → held (with how many webhooks were
    queued). None: the message was not `validated`."""
    row = await conn.fetchrow(_ADMIT, message_id)
    return (str(row["status"]), int(row["webhooks"])) if row else None


# -- route ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToRoute:
    key: MessageKey
    status: str
    attempts: int
    live_ips: list[str]


# load_to_route: the message and the egress sources its organization may use right now —
# its dedicated pool when it has one, else the shared pool (IPs in no pool) — held by
# sender nodes seen within `fresh` seconds.
_TO_ROUTE = """
SELECT m.id, m.organization_id, m.project_id, m.status::text, m.attempts,
       ARRAY(SELECT host(o.ip) FROM outbound_ips o
               JOIN sender_nodes n ON n.name = o.node_name
               JOIN organizations org ON org.id = m.organization_id
              WHERE n.heartbeat_at > now() - make_interval(secs => $2)
                AND o.pool_id IS NOT DISTINCT FROM org.ip_pool_id
              ORDER BY o.ip) AS live_ips
  FROM messages m WHERE m.id = $1
"""


async def load_to_route(conn: Executor, message_id: UUID, fresh_seconds: float) -> ToRoute | None:
    row = await conn.fetchrow(_TO_ROUTE, message_id, fresh_seconds)
    if row is None:
        return None
    key = MessageKey(row["id"], row["organization_id"], row["project_id"])
    return ToRoute(key, row["status"], row["attempts"], list(row["live_ips"]))


async def set_route(conn: Executor, message_id: UUID, outbound_ip: str) -> bool:
    """admitted → routed, with the chosen egress source."""
    result = await conn.fetchval(
        "UPDATE messages SET status = 'routed', outbound_ip = $2::inet, reason = NULL, updated_at = now()"
        " WHERE id = $1 AND status = 'admitted' AND organization_may_send(organization_id) RETURNING id",
        message_id,
        outbound_ip,
    )
    return result is not None


# -- intake: validate + quota + route at once ---------------------------------------------------
# When one process hosts all three steps (the all-in-one runtime), a batch of received messages
# is loaded in one query and moved in one statement, each guarded as the three steps are.


@dataclass(frozen=True)
class ToIntake:
    validate: ToValidate
    attempts: int
    live_ips: list[str]


_TO_INTAKE = """
SELECT m.id, m.organization_id, m.project_id, m.status::text, m.mail_from, m.attempts,
       substring(m.raw FROM 1 FOR COALESCE(NULLIF(position('\\x0d0a0d0a'::bytea IN m.raw), 0) + 1,
                                            octet_length(m.raw))) AS head,
       ARRAY(SELECT r.address FROM recipients r WHERE r.message_id = m.id ORDER BY r.id) AS recipients,
       ARRAY(SELECT s.address FROM recipients r JOIN suppressions s
                ON s.organization_id = m.organization_id AND s.address = lower(r.address)
              WHERE r.message_id = m.id) AS suppressed,
       ARRAY(SELECT d.name FROM domains d JOIN domain_projects dp ON dp.domain_id = d.id
              WHERE dp.project_id = m.project_id AND d.verified_at IS NOT NULL) AS verified,
       ARRAY(SELECT host(o.ip) FROM outbound_ips o
               JOIN sender_nodes n ON n.name = o.node_name
              WHERE n.heartbeat_at > now() - make_interval(secs => $2)
                AND o.pool_id IS NOT DISTINCT FROM org.ip_pool_id
              ORDER BY o.ip) AS live_ips
  FROM messages m JOIN organizations org ON org.id = m.organization_id
 WHERE m.id = ANY($1::uuid[]) AND m.status = 'received'
"""


async def load_to_intake(conn: Executor, message_ids: Sequence[UUID], fresh_seconds: float) -> list[ToIntake]:
    """The received ones among `message_ids`, with what validate and route need."""
    rows = await conn.fetch(_TO_INTAKE, list(message_ids), fresh_seconds)
    return [
        ToIntake(
            ToValidate(
                MessageKey(row["id"], row["organization_id"], row["project_id"]),
                row["status"],
                row["mail_from"],
                bytes(row["head"]),
                list(row["recipients"]),
                set(row["suppressed"]),
                list(row["verified"]),
            ),
            row["attempts"],
            list(row["live_ips"]),
        )
        for row in rows
    ]


@dataclass(frozen=True)
class IntakeDecision:
    message_id: UUID
    reject_reason: str | None
    suppressed: list[str]
    outbound_ip: str | None  # None: no live egress source now (stays admitted for the sweep)


@dataclass(frozen=True)
class IntakeResult:
    message_id: UUID
    status: str  # rejected | held (quota) | admitted (no egress source) | routed
    webhooks: int


# apply_intake: received → rejected | held | admitted | routed for a whole batch. Only messages
# still `received` whose organization may send move (rows locked in id order, so two batches
# never deadlock); the rest are left to the caller (a duplicate, or a block to hold). Quota is
# granted per organization under its row lock, first messages first, exactly as admit does one
# at a time, with its 80 % / 100 % notifications; suppressed recipients are marked.
_INTAKE = """
WITH i AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[]) AS i(id, reject_reason, ip)
), m AS (
    SELECT m.id, m.organization_id, i.reject_reason, i.ip
      FROM messages m JOIN i ON i.id = m.id
      JOIN organizations org ON org.id = m.organization_id AND org.block_status = 'not_blocked'
     WHERE m.status = 'received'
     ORDER BY m.id FOR UPDATE OF m
), want AS (
    SELECT organization_id, count(*) AS n FROM m WHERE reject_reason IS NULL GROUP BY 1
), o AS (
    -- Locking reads the newest committed row, so concurrent batches never over-count; NO KEY
    -- (as an UPDATE takes) leaves the foreign-key checks of concurrent inserts unblocked.
    SELECT o.id, o.monthly_quota,
           CASE WHEN o.quota_period_start < date_trunc('month', now())::date THEN 0
                ELSE o.quota_used END AS used
      FROM organizations o WHERE o.id IN (SELECT organization_id FROM want)
     ORDER BY o.id FOR NO KEY UPDATE
), granted AS (
    SELECT o.id, o.monthly_quota, o.used, least(w.n, greatest(o.monthly_quota - o.used, 0))::int AS allowed
      FROM o JOIN want w ON w.organization_id = o.id
), counted AS (
    UPDATE organizations
       SET quota_used = g.used + g.allowed, quota_period_start = date_trunc('month', now())::date,
           updated_at = now()
      FROM granted g WHERE organizations.id = g.id AND g.allowed > 0
), noticed AS (
    -- quota.warning when the count passed through [80 %, 100 %), quota.exhausted when it
    -- reached 100 %: once a month each (the once-key), as with one message at a time.
    INSERT INTO notifications (organization_id, kind, message, details, once_key)
    SELECT g.id, k.kind,
           'Monthly quota: ' || (g.used + g.allowed) || ' of ' || g.monthly_quota || ' messages used'
             || CASE WHEN k.kind = 'quota.exhausted' THEN '; further messages are held' ELSE '' END,
           jsonb_build_object('used', g.used + g.allowed, 'limit', g.monthly_quota,
                              'month', to_char(date_trunc('month', now()), 'YYYY-MM')),
           to_char(date_trunc('month', now()), 'YYYY-MM')
      FROM granted g, (VALUES ('quota.warning'), ('quota.exhausted')) AS k(kind)
     WHERE g.allowed > 0
       AND CASE k.kind WHEN 'quota.warning'
                THEN greatest(g.used + 1, (4 * g.monthly_quota + 4) / 5)
                     <= least(g.used + g.allowed, g.monthly_quota - 1)
                ELSE g.used + g.allowed >= g.monthly_quota END
    ON CONFLICT (organization_id, kind, once_key) WHERE once_key IS NOT NULL DO NOTHING
), ranked AS (
    SELECT m.id, m.reject_reason, m.ip,
           CASE WHEN m.reject_reason IS NOT NULL THEN 'rejected'
                WHEN row_number() OVER (PARTITION BY m.organization_id, m.reject_reason IS NULL ORDER BY m.id)
                     > g.allowed THEN 'held'
                WHEN m.ip IS NULL THEN 'admitted'
                ELSE 'routed' END AS status
      FROM m LEFT JOIN granted g ON g.id = m.organization_id
), moved AS (
    UPDATE messages
       SET status = r.status::message_status,
           reason = CASE r.status WHEN 'rejected' THEN r.reject_reason
                                  WHEN 'held' THEN 'monthly quota used up' END,
           outbound_ip = CASE WHEN r.status = 'routed' THEN r.ip::inet ELSE messages.outbound_ip END,
           finished_at = CASE WHEN r.status = 'rejected' THEN now() END, updated_at = now()
      FROM ranked r WHERE messages.id = r.id
    RETURNING messages.id, r.status
), suppressed AS (
    UPDATE recipients SET status = 'suppressed', last_text = 'address is on the suppression list',
           updated_at = now()
      FROM unnest($4::uuid[], $5::text[]) AS s(message_id, address)
     WHERE recipients.message_id = s.message_id AND lower(recipients.address) = s.address
       AND s.message_id IN (SELECT id FROM m)
    RETURNING 1
)
-- The WHERE makes the recipients' update run before the webhooks read them.
SELECT mv.id, mv.status,
       CASE mv.status WHEN 'rejected' THEN enqueue_webhooks(mv.id, 'message.rejected')
                      WHEN 'held' THEN enqueue_webhooks(mv.id, 'message.held') ELSE 0 END
     + CASE WHEN mv.id = ANY($4::uuid[]) THEN enqueue_webhooks(mv.id, 'message.suppressed') ELSE 0 END
       AS webhooks
  FROM moved mv WHERE (SELECT count(*) FROM suppressed) >= 0
"""


async def apply_intake(conn: Executor, decisions: Sequence[IntakeDecision]) -> list[IntakeResult]:
    """Move the decided messages that are still `received`; the others are not in the result."""
    if not decisions:
        return []
    pairs = [(d.message_id, a.lower()) for d in decisions for a in d.suppressed]
    rows = await conn.fetch(
        _INTAKE,
        [d.message_id for d in decisions],
        [d.reject_reason for d in decisions],
        [d.outbound_ip for d in decisions],
        [p[0] for p in pairs],
        [p[1] for p in pairs],
    )
    return [IntakeResult(r["id"], r["status"], r["webhooks"]) for r in rows]


# -- send -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claimed:
    key: MessageKey
    mail_from: str
    raw: bytes
    recipients: list[tuple[str, str]]  # (address, domain) of the recipients still to deliver
    sandbox: bool  # its project's messages are signed and recorded, never sent
    # The verified return-path domain for the sender (VERP), if any, and the row id of each
    # recipient to deliver, read by the claim itself.
    return_domain: str | None
    recipient_ids: dict[str, int]
    # What the decide step needs besides this attempt's replies, so that the sender can decide
    # the outcome itself: the attempt count after this claim, the lifetime, the accept time and
    # the statuses of the recipients settled by earlier attempts.
    attempts: int
    expires_at: datetime
    created_at: datetime
    settled: list[str]
    # The signing keys: the domain they sign for and its (selector, sealed private key) pairs,
    # RSA first; None and [] when the organization has no domain for the sender.
    dkim_domain: str | None
    dkim_keys: list[tuple[str, bytes]]
    # The lease's name ("node#attempt"): what records, finishes, renews and decides this claim.
    lease: str


# claim_for_sending: routed → sending for this node and IP, with a lease, for a batch; counts
# the attempt and returns what the sender needs, in one statement. A blocked organization's
# message is held instead (resuming at admitted: routed again when released), by the same UPDATE.
_CLAIM = """
WITH locked AS (
    -- By key and in id order (two batches never deadlock). `status::text`: a plain comparison
    -- lets the planner scan the partial index of every unfinished row instead of the keys.
    SELECT m.id FROM messages m
     WHERE m.id = ANY($1::uuid[]) AND m.status::text = 'routed' AND m.outbound_ip = $2::inet
     ORDER BY m.id FOR UPDATE
), c AS (
    UPDATE messages m
       SET status = CASE WHEN o.block_status = 'not_blocked' THEN 'sending'
                         ELSE 'held' END::message_status,
           resume_status = CASE WHEN o.block_status = 'not_blocked' THEN m.resume_status
                                ELSE 'admitted' END,
           reason = CASE WHEN o.block_status = 'not_blocked' THEN m.reason ELSE $5 END,
           -- The lease names its node and this claim: a task of this node that outlived an
           -- earlier lease of the message can no longer record or decide anything under it.
           lease_owner = CASE WHEN o.block_status = 'not_blocked' THEN $3 || '#' || (m.attempts + 1) END,
           lease_until = CASE WHEN o.block_status = 'not_blocked'
                              THEN now() + make_interval(secs => $4) END,
           attempts = m.attempts + CASE WHEN o.block_status = 'not_blocked' THEN 1 ELSE 0 END,
           updated_at = now()
      FROM organizations o
     WHERE m.id IN (SELECT id FROM locked) AND o.id = m.organization_id
    RETURNING m.id, m.organization_id, m.project_id, m.mail_from, m.raw, m.status::text AS status,
              m.attempts, m.expires_at, m.created_at, m.lease_owner
), r AS (
    SELECT r.message_id,
           array_agg(r.address ORDER BY r.id) FILTER (WHERE r.status IN ('pending', 'deferred')) AS addresses,
           array_agg(r.domain ORDER BY r.id) FILTER (WHERE r.status IN ('pending', 'deferred')) AS domains,
           array_agg(r.id ORDER BY r.id) FILTER (WHERE r.status IN ('pending', 'deferred')) AS ids,
           array_agg(r.status::text) FILTER (WHERE r.status NOT IN ('pending', 'deferred')) AS settled
      FROM recipients r WHERE r.message_id IN (SELECT id FROM c) GROUP BY r.message_id
)
SELECT c.id, c.organization_id, c.project_id, c.mail_from, c.status, p.sandbox, c.lease_owner,
       CASE WHEN c.status = 'sending' THEN c.raw END AS raw,
       r.addresses, r.domains, r.ids, r.settled,
       c.attempts, c.expires_at, c.created_at,
       -- The sender's domain as the signing keys' lookup reads it (after the last @, a parent
       -- only at a dot boundary, never a bare top-level name), for verified return paths.
       (SELECT d.name FROM domains d
         WHERE d.organization_id = c.organization_id AND d.verified_at IS NOT NULL
           AND d.return_path_verified_at IS NOT NULL
           AND (d.name = lower(substring(c.mail_from FROM '@([^@]*)$'))
                OR (position('.' IN d.name) > 0
                    AND right(lower(substring(c.mail_from FROM '@([^@]*)$')), length(d.name) + 1)
                        = '.' || d.name))
         ORDER BY length(d.name) DESC LIMIT 1) AS return_domain,
       k.domain AS dkim_domain, COALESCE(k.selectors, '{}') AS dkim_selectors,
       COALESCE(k.sealed, '{}') AS dkim_sealed,
       CASE WHEN c.status = 'held' THEN enqueue_webhooks(c.id, 'message.held') END AS held_webhooks
  FROM c JOIN projects p ON p.id = c.project_id LEFT JOIN r ON r.message_id = c.id
  -- The signing keys, read with the claim (a rotated or re-added key signs at once): those of
  -- the organization's most specific domain that is the sender's domain or a parent of it
  -- (never a bare top-level name) — its RSA key first, then any active keys by selector.
  LEFT JOIN LATERAL (
      SELECT d.name AS domain,
             array_prepend(d.dkim_selector, COALESCE(active.selectors, '{}')) AS selectors,
             array_prepend(d.dkim_private_sealed, COALESCE(active.sealed, '{}')) AS sealed
        FROM (SELECT lower(substring(c.mail_from FROM '@([^@]*)$')) AS name) sender
        JOIN domains d ON d.organization_id = c.organization_id
         AND (d.name = sender.name
              OR (position('.' IN d.name) > 0
                  AND right(sender.name, length(d.name) + 1) = '.' || d.name))
        LEFT JOIN LATERAL (
            SELECT array_agg(x.selector ORDER BY x.selector) AS selectors,
                   array_agg(x.private_sealed ORDER BY x.selector) AS sealed
              FROM dkim_keys x WHERE x.domain_id = d.id AND x.state = 'active'
        ) active ON true
       WHERE c.status = 'sending'
       ORDER BY length(d.name) DESC LIMIT 1
  ) k ON true
"""


async def claim_for_sending(
    conn: Executor, message_id: UUID, outbound_ip: str, node: str, lease_seconds: float
) -> Claimed | None:
    """None: not routed to this IP (a duplicate event, or another node took it), or held
    because its organization is blocked."""
    claimed = await claim_many_for_sending(conn, [message_id], outbound_ip, node, lease_seconds)
    return claimed[0] if claimed else None


async def claim_many_for_sending(
    conn: Executor, message_ids: Sequence[UUID], outbound_ip: str, node: str, lease_seconds: float
) -> list[Claimed]:
    """The messages among `message_ids` now sending under this node's lease; the others were
    not routed to this IP (duplicates, or another node took them) or were held (blocked)."""
    rows = await conn.fetch(_CLAIM, list(message_ids), outbound_ip, node, lease_seconds, BLOCKED_REASON)
    return [_claimed(row) for row in rows if row["status"] == "sending"]


def _claimed(row: asyncpg.Record) -> Claimed:
    addresses = row["addresses"] or []
    return Claimed(
        MessageKey(row["id"], row["organization_id"], row["project_id"]),
        row["mail_from"],
        bytes(row["raw"]),
        list(zip(addresses, row["domains"] or [], strict=True)),
        bool(row["sandbox"]),
        row["return_domain"],
        dict(zip(addresses, row["ids"] or [], strict=True)),
        row["attempts"],
        row["expires_at"],
        row["created_at"],
        list(row["settled"] or []),
        row["dkim_domain"],
        list(zip(row["dkim_selectors"], (bytes(k) for k in row["dkim_sealed"]), strict=True)),
        row["lease_owner"],
    )


@dataclass(frozen=True)
class AttemptRecord:
    """One SMTP transaction (or failed try) for one destination domain."""

    domain: str
    recipients: list[str]
    mx_host: str | None
    source_ip: str
    tls_version: str | None
    code: int | None
    enhanced: str | None
    text: str
    duration_ms: int
    replies: dict[str, tuple[int | None, str | None, str]]  # address → (code, enhanced, text)
    site: str | None = None  # the destination site (its MX host names), when it was resolved
    waited: str | None = None  # why the attempt waited before it started, if it did


# record_destination: one destination's attempt row and its recipients' replies, stored as
# soon as that destination is done (not when the whole message is), only for the node holding
# the lease. A recipient whose reply is final and positive is marked delivered right here, so
# a crash before the message is finished never sends to it again (the claim skips it).
_RECORD = """
WITH m AS (
    SELECT id FROM messages WHERE id = $1 AND status = 'sending' AND lease_owner = $2 FOR UPDATE
), r AS (
    UPDATE recipients
       SET last_code = u.code, last_enhanced = u.enhanced, last_text = u.text,
           attempts = recipients.attempts + 1, updated_at = now(),
           status = CASE WHEN u.delivered THEN 'delivered'::recipient_status ELSE recipients.status END,
           delivered_at = CASE WHEN u.delivered THEN now() ELSE recipients.delivered_at END
      FROM jsonb_to_recordset($3::jsonb) AS u(address text, code int, enhanced text, text text,
                                               delivered boolean)
     WHERE recipients.message_id IN (SELECT id FROM m) AND recipients.address = u.address
       AND recipients.status IN ('pending', 'deferred')
), a AS (
    INSERT INTO attempts (message_id, domain, recipients, mx_host, source_ip, tls_version, code,
                          enhanced, text, duration_ms, site, waited)
    SELECT m.id, $4, $5::text[], $6, $7::inet, $8, $9, $10, $11, $12, $13, $14 FROM m
)
SELECT id FROM m
"""


async def record_destination(
    conn: Executor, message_id: UUID, lease: str, attempt: AttemptRecord, delivered: Sequence[str]
) -> bool:
    """Store one destination's outcome; `delivered` are the recipients to mark delivered now.
    `lease` is the claim's (Claimed.lease). False: the lease is no longer ours (nothing written)."""
    done = set(delivered)
    replies = [
        {"address": address, "code": code, "enhanced": enhanced, "text": text, "delivered": address in done}
        for address, (code, enhanced, text) in attempt.replies.items()
    ]
    a = attempt
    found = await conn.fetchval(
        _RECORD,
        message_id,
        lease,
        replies,
        a.domain,
        a.recipients,
        a.mx_host,
        a.source_ip,
        a.tls_version,
        a.code,
        a.enhanced,
        a.text,
        a.duration_ms,
        a.site,
        a.waited,
    )
    return found is not None


# finish_sending: sending → attempted once every destination is recorded, for the lease holder.
# `signed` (a sandbox message) replaces the stored bytes with exactly what would have gone out.
_FINISH = """
UPDATE messages SET status = 'attempted', lease_owner = NULL, lease_until = NULL, updated_at = now(),
       raw = COALESCE($3::bytea, raw), size = COALESCE(octet_length($3::bytea), size)
 WHERE id = $1 AND status = 'sending' AND lease_owner = $2
RETURNING id
"""


async def finish_sending(conn: Executor, message_id: UUID, lease: str, signed: bytes | None = None) -> bool:
    return await conn.fetchval(_FINISH, message_id, lease, signed) is not None


async def extend_lease(conn: Executor, message_id: UUID, lease: str, seconds: float) -> bool:
    """Renew the sending lease of a message that waits (a shaped destination) so the sweep
    does not take it back; False when the lease has ended."""
    found = await conn.fetchval(
        "UPDATE messages SET lease_until = now() + make_interval(secs => $3)"
        " WHERE id = $1 AND status = 'sending' AND lease_owner = $2 RETURNING id",
        message_id,
        lease,
        seconds,
    )
    return found is not None


# The leases of one node: "node#attempt" (and a bare "node", as leases were named before).
_RELEASE = """
UPDATE messages SET status = 'admitted', lease_owner = NULL, lease_until = NULL, updated_at = now()
 WHERE status = 'sending'
   AND (lease_owner = $1
        OR (left(lease_owner, length($1) + 1) = $1 || '#'
            AND substr(lease_owner, length($1) + 2) ~ '^[0-9]+$'))
RETURNING id, organization_id, project_id
"""


async def release_node_leases(conn: Executor, node: str) -> list[MessageKey]:
    """A node that (re)starts holds no sends: its leased messages go back to routing."""
    rows = await conn.fetch(_RELEASE, node)
    return [MessageKey(**r) for r in rows]


# -- decide -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempted:
    key: MessageKey
    status: str
    attempts: int
    expires_at: datetime
    recipients: list[RecipientRow]
    created_at: datetime | None = None  # when it was accepted (for the accept-to-final figure)
    settled: tuple[str, ...] = ()  # statuses of recipients not in `recipients` (settled before)


_ATTEMPTED_MANY = """
SELECT m.id, m.organization_id, m.project_id, m.status::text, m.attempts, m.expires_at, m.created_at,
       COALESCE((SELECT jsonb_agg(jsonb_build_object(
                    'id', r.id, 'address', r.address, 'domain', r.domain, 'status', r.status,
                    'last_code', r.last_code, 'last_enhanced', r.last_enhanced, 'last_text', r.last_text)
                    ORDER BY r.id)
                   FROM recipients r WHERE r.message_id = m.id), '[]'::jsonb) AS recipients
  FROM messages m WHERE m.id = ANY($1::uuid[]) AND m.status = 'attempted'
"""


# -- decide, for a batch ----------------------------------------------------------------------


async def load_attempted_many(conn: Executor, message_ids: Sequence[UUID]) -> list[Attempted]:
    """The `attempted` ones among `message_ids`, each with its recipients."""
    rows = await conn.fetch(_ATTEMPTED_MANY, list(message_ids))
    return [
        Attempted(
            MessageKey(row["id"], row["organization_id"], row["project_id"]),
            row["status"],
            row["attempts"],
            row["expires_at"],
            [RecipientRow(**r) for r in row["recipients"]],
            row["created_at"],
        )
        for row in rows
    ]


@dataclass(frozen=True)
class Outcome:
    """What the decide step concluded for one attempted message."""

    message_id: UUID
    status: str
    reason: str | None
    next_attempt: datetime | None
    recipient_statuses: dict[int, str]
    suppress: list[tuple[str, str]]  # (address, why)


# apply_outcomes: attempted → the decided status for a batch, in one statement: each message moves only if
# still `attempted` (rows locked in id order), with its recipients, suppressions and webhooks. With
# leases ($10, one a message), sending → the decided status instead, only while its lease holds:
# the sender deciding its own attempts; $11 then replaces a sandbox message's bytes with the
# signed ones, and $12 to $16 record each message's last destination's attempt (what
# record_destination would have stored).
_OUTCOMES = """
WITH o AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $10::text[], $11::bytea[])
                  AS o(id, status, reason, next_attempt_at, lease, signed)
), locked AS (
    -- By key (`status::text`: a plain comparison lets the planner scan the partial index of
    -- every row in that status instead of the keys) and in id order (no deadlock).
    SELECT messages.id FROM messages JOIN o ON messages.id = o.id
     WHERE messages.id = ANY($1::uuid[]) AND {guard}
     ORDER BY messages.id FOR UPDATE OF messages
), m AS (
    UPDATE messages
       SET status = o.status::message_status, reason = o.reason, next_attempt_at = o.next_attempt_at,
           updated_at = now(), lease_owner = NULL, lease_until = NULL,
           raw = COALESCE(o.signed, raw), size = COALESCE(octet_length(o.signed), size),
           finished_at = CASE WHEN o.status IN ('delivered', 'bounced', 'failed') THEN now() END
      FROM o WHERE messages.id = o.id AND messages.id IN (SELECT id FROM locked)
    RETURNING messages.id, messages.organization_id, o.status
), r AS (
    -- `replied`: this statement also records the attempt's reply for the recipient (the
    -- sender's last destination, not recorded apart); the other arrays are then empty.
    UPDATE recipients
       SET status = u.status::recipient_status, updated_at = now(),
           delivered_at = CASE WHEN u.status = 'delivered' THEN now() ELSE recipients.delivered_at END,
           last_code = CASE WHEN u.replied THEN u.code ELSE recipients.last_code END,
           last_enhanced = CASE WHEN u.replied THEN u.enhanced ELSE recipients.last_enhanced END,
           last_text = CASE WHEN u.replied THEN u.text ELSE recipients.last_text END,
           attempts = recipients.attempts + CASE WHEN u.replied THEN 1 ELSE 0 END
      FROM unnest($5::bigint[], $6::text[], $12::boolean[], $13::int[], $14::text[], $15::text[])
           AS u(id, status, replied, code, enhanced, text)
     WHERE recipients.id = u.id AND recipients.message_id IN (SELECT id FROM m)
       AND recipients.status IN ('pending', 'deferred')  -- settled meanwhile (a complaint): kept
    RETURNING 1
), a AS (
    INSERT INTO attempts (message_id, domain, recipients, mx_host, source_ip, tls_version, code,
                          enhanced, text, duration_ms, site, waited)
    SELECT m.id, x.domain, x.recipients, x.mx_host, x.source_ip, x.tls_version, x.code, x.enhanced,
           x.text, x.duration_ms, x.site, x.waited
      FROM m JOIN jsonb_to_recordset($16::jsonb)
                  AS x(message_id uuid, domain text, recipients text[], mx_host text, source_ip inet,
                       tls_version text, code int, enhanced text, text text, duration_ms int,
                       site text, waited text)
        ON x.message_id = m.id
), s AS (
    INSERT INTO suppressions (organization_id, address, reason)
    SELECT m.organization_id, lower(x.address), x.reason
      FROM m JOIN unnest($7::uuid[], $8::text[], $9::text[]) AS x(message_id, address, reason)
        ON x.message_id = m.id
    ON CONFLICT DO NOTHING
)
-- The outbox rows are written with the outcomes; the WHERE runs the recipients' update first.
SELECT id, status, enqueue_webhooks(id, 'message.' || status) AS webhooks
  FROM m WHERE (SELECT count(*) FROM r) >= 0
"""
_OUTCOMES_OF_ATTEMPTED = _OUTCOMES.replace("{guard}", "messages.status::text = 'attempted'")
_OUTCOMES_OF_SENDING = _OUTCOMES.replace(
    "{guard}", "messages.status::text = 'sending' AND messages.lease_owner = o.lease"
)


@dataclass(frozen=True)
class SenderFinish:
    """A sender deciding its own attempt of one message: the claim's lease (Claimed.lease), a
    sandbox message's signed bytes, and the last destination's attempt, not recorded yet
    (`recipient_ids`: address → that message's recipient row)."""

    lease: str
    signed: bytes | None = None
    attempt: AttemptRecord | None = None
    recipient_ids: Mapping[str, int] = field(default_factory=dict)


async def apply_outcomes(
    conn: Executor, outcomes: Sequence[Outcome], finishes: Sequence[SenderFinish] | None = None
) -> dict[UUID, int]:
    """Message id → webhooks queued, for the messages that moved: still `attempted` or, with
    `finishes` (one for each outcome, in order), still `sending` under their leases — each
    finished by its sender, the finish's attempt stored here instead of by record_destination."""
    if not outcomes:
        return {}
    if finishes is not None and len(finishes) != len(outcomes):
        raise ValueError("one sender finish for each outcome")
    statuses = [(rid, st) for o in outcomes for rid, st in o.recipient_statuses.items()]
    replied: dict[int, tuple[int | None, str | None, str]] = {}
    attempts: list[dict[str, object]] = []
    for outcome, finish in zip(outcomes, finishes or (), strict=False):
        if (a := finish.attempt) is None:
            continue
        ids = finish.recipient_ids
        replied.update({ids[address]: r for address, r in a.replies.items() if address in ids})
        attempts.append(
            {
                "message_id": str(outcome.message_id),
                "domain": a.domain,
                "recipients": a.recipients,
                "mx_host": a.mx_host,
                "source_ip": a.source_ip,
                "tls_version": a.tls_version,
                "code": a.code,
                "enhanced": a.enhanced,
                "text": a.text,
                "duration_ms": a.duration_ms,
                "site": a.site,
                "waited": a.waited,
            }
        )
    answered = [replied.get(rid) for rid, _ in statuses] if replied else []
    suppress = [(o.message_id, address, why) for o in outcomes for address, why in o.suppress]
    rows = await conn.fetch(
        _OUTCOMES_OF_ATTEMPTED if finishes is None else _OUTCOMES_OF_SENDING,
        [o.message_id for o in outcomes],
        [o.status for o in outcomes],
        [o.reason for o in outcomes],
        [o.next_attempt for o in outcomes],
        [rid for rid, _ in statuses],
        [st for _, st in statuses],
        [m for m, _, _ in suppress],
        [a for _, a, _ in suppress],
        [w for _, _, w in suppress],
        [f.lease for f in finishes] if finishes is not None else [],
        [f.signed for f in finishes] if finishes is not None else [],
        [r is not None for r in answered],
        [r[0] if r else None for r in answered],
        [r[1] if r else None for r in answered],
        [r[2] if r else None for r in answered],
        attempts,
    )
    return {r["id"]: r["webhooks"] for r in rows}


# -- warm-up ----------------------------------------------------------------------------------

_NOTHING = UUID(int=0)


async def warm_up(conn: Executor) -> None:
    """Run each per-message statement once on a new connection, with arguments that match
    nothing: the connection then holds them prepared with their types known, and its backend
    has loaded the catalog entries they touch — work the first messages after a start would
    otherwise pay for, all at once (measured: the first second's p99 at 100 msg/s)."""
    await conn.fetch(_TO_INTAKE, [], 0.0)
    await conn.fetch(_INTAKE, [], [], [], [], [])
    await conn.fetch(_CLAIM, [_NOTHING], "192.0.2.0", "", 0.0, BLOCKED_REASON)
    await conn.fetchval(
        _RECORD, _NOTHING, "", [], "", [], None, "192.0.2.0", None, None, None, "", 0, None, None
    )
    await conn.fetch(_ATTEMPTED_MANY, [])
    for outcomes in (_OUTCOMES_OF_ATTEMPTED, _OUTCOMES_OF_SENDING):
        await conn.fetch(outcomes, *([[]] * 15), [])
