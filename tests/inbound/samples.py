"""Sample mail that comes back: DSNs in several MTA dialects, an ARF complaint, DMARC reports."""

from __future__ import annotations

import base64
import gzip
import io
import zipfile


def _crlf(text: str) -> bytes:
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode()


def postfix_dsn(to: str, recipient: str, status: str = "5.1.1", action: str = "failed") -> bytes:
    """As Postfix's bounce(8) writes it (Diagnostic-Code of type X-Postfix for a local failure)."""
    return _crlf(f"""From: MAILER-DAEMON@mx.receiver.test (Mail Delivery System)
To: {to}
Subject: Undelivered Mail Returned to Sender
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B1"

--B1
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

This is the mail system at host mx.receiver.test.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients.

<{recipient}>: unknown user: "{recipient.split("@")[0]}"

--B1
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.receiver.test
X-Postfix-Queue-ID: 4ABCD12345
Arrival-Date: Tue,  1 Dec 2026 10:00:00 +0000 (UTC)

Final-Recipient: rfc822; {recipient}
Original-Recipient: rfc822;{recipient}
Action: {action}
Status: {status}
Diagnostic-Code: X-Postfix; unknown user: "{recipient.split("@")[0]}"

--B1
Content-Description: Undelivered Message Headers
Content-Type: text/rfc822-headers

From: app@example.test
To: {recipient}
Subject: code

--B1--
""")


def exim_dsn(to: str, recipient: str) -> bytes:
    """Exim-style, with an SMTP Diagnostic-Code from the next hop."""
    return _crlf(f"""From: Mail Delivery System <Mailer-Daemon@exim.receiver.test>
To: {to}
Subject: Mail delivery failed: returning message to sender
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary=1234-exim

--1234-exim
Content-type: text/plain; charset=us-ascii

This message was created automatically by mail delivery software.

--1234-exim
Content-type: message/delivery-status

Reporting-MTA: dns; exim.receiver.test

Action: failed
Final-Recipient: rfc822;{recipient}
Status: 5.0.0
Remote-MTA: dns; inner.receiver.test
Diagnostic-Code: smtp; 550 5.2.1 The email account that you tried to reach is disabled

--1234-exim--
""")


def delayed_dsn(to: str, recipient: str) -> bytes:
    return postfix_dsn(to, recipient, status="4.4.1", action="delayed")


def qmail_bounce(to: str, recipient: str) -> bytes:
    """No delivery-status part: qmail's plain-text bounce, for the detector library."""
    return _crlf(f"""From: MAILER-DAEMON@qmail.receiver.test
To: {to}
Subject: failure notice

Hi. This is the qmail-send program at qmail.receiver.test.
I'm afraid I wasn't able to deliver your message to the following addresses.
This is a permanent error; I've given up. Sorry it didn't work out.

<{recipient}>:
Sorry, no mailbox here by that name. (#5.1.1)

--- Below this line is a copy of the message.

Subject: code
""")


def arf_complaint(to: str, recipient: str, original_mail_from: str | None) -> bytes:
    """An abuse report (RFC 5965) as a mailbox provider's feedback loop sends it."""
    omf = f"Original-Mail-From: <{original_mail_from}>\n" if original_mail_from else ""
    return_path = f"Return-Path: <{original_mail_from}>\n" if original_mail_from else ""
    return _crlf(f"""From: <feedback@fbl.provider.test>
To: {to}
Subject: FW: code
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="part1"

--part1
Content-Type: text/plain; charset="US-ASCII"

This is an email abuse report for an email message received from IP 127.0.0.2.

--part1
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: SomeGenerator/1.0
Version: 1
{omf}Original-Rcpt-To: <{recipient}>
Reported-Domain: example.test
Source-IP: 127.0.0.2

--part1
Content-Type: message/rfc822
Content-Disposition: inline

{return_path}From: app@example.test
To: {recipient}
Subject: code

Your code is 123456.
--part1--
""")


def dmarc_xml(domain: str, *, report_id: str = "r-1", org: str = "provider.test", records: int = 2) -> bytes:
    rows = "".join(
        f"""  <record>
    <row><source_ip>127.0.0.{2 + i}</source_ip><count>{3 + i}</count>
      <policy_evaluated><disposition>none</disposition><dkim>{"pass" if i == 0 else "fail"}</dkim>
      <spf>{"pass" if i == 0 else "fail"}</spf></policy_evaluated></row>
    <identifiers><header_from>{domain}</header_from></identifiers>
    <auth_results><dkim><domain>{domain}</domain><result>pass</result></dkim></auth_results>
  </record>
"""
        for i in range(records)
    )
    return f"""<?xml version="1.0" encoding="UTF-8" ?>
<feedback>
  <report_metadata>
    <org_name>{org}</org_name><email>noreply-dmarc@{org}</email>
    <report_id>{report_id}</report_id>
    <date_range><begin>1764547200</begin><end>1764633599</end></date_range>
  </report_metadata>
  <policy_published><domain>{domain}</domain><adkim>r</adkim><aspf>r</aspf><p>none</p></policy_published>
{rows}</feedback>
""".encode()


def report_mail(to: str, attachment: bytes, content_type: str, filename: str) -> bytes:
    body = base64.encodebytes(attachment).decode()
    return _crlf(f"""From: noreply-dmarc@provider.test
To: {to}
Subject: Report domain: example.test Submitter: provider.test Report-ID: r-1
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="dm"

--dm
Content-Type: text/plain

A DMARC aggregate report.

--dm
Content-Type: {content_type}; name="{filename}"
Content-Disposition: attachment; filename="{filename}"
Content-Transfer-Encoding: base64

{body}
--dm--
""")


def gzipped(data: bytes) -> bytes:
    return gzip.compress(data)


def zipped(data: bytes, name: str = "report.xml") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name, data)
    return buffer.getvalue()


def zip_bomb(decompressed: int = 64 * 1024 * 1024) -> bytes:
    """A small zip that inflates to `decompressed` bytes of zeros."""
    buffer = io.BytesIO()
    with (
        zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive,
        archive.open("report.xml", "w", force_zip64=True) as member,
    ):
        chunk = b"\0" * (1024 * 1024)
        for _ in range(decompressed // len(chunk)):
            member.write(chunk)
    return buffer.getvalue()


def entity_attack(domain: str) -> bytes:
    """A billion-laughs DTD inside an otherwise plausible report."""
    return f"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<feedback><report_metadata><org_name>&lol3;</org_name><report_id>x</report_id>
<date_range><begin>1</begin><end>2</end></date_range></report_metadata>
<policy_published><domain>{domain}</domain></policy_published></feedback>
""".encode()
