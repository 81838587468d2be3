#!/usr/bin/env python3
"""Writes the sample traces for `smtp-shaper simulate` (deterministic: seeded).

Each row is one message: seconds since the trace start, the app that sent it,
its number of recipients. Run from this folder: python3 generate.py
(`python3 generate.py --last-week FILE` writes only the existing gateway's
log, moved to the week before today.)
"""
import random

DAY = 86_400
HOUR = 3_600


def poisson_times(rng, start, end, per_hour):
    """Arrival times of a Poisson process with `per_hour` events per hour."""
    times, t = [], start
    rate = per_hour / HOUR
    while True:
        t += rng.expovariate(rate)
        if t >= end:
            return times
        times.append(t)


def write(name, rows):
    rows.sort()
    with open(name, "w") as out:
        out.write("timestamp,app,recipients\n")
        for t, app, recipients in rows:
            out.write(f"{t:.1f},{app},{recipients}\n")


def idle_burst(rng):
    """A quiet gateway (a few messages an hour) hit by 5,000 messages in ten
    minutes from one app, while another keeps its trickle."""
    rows = [(t, "alerts", 1) for t in poisson_times(rng, 0, 3 * DAY, 4)]
    rows += [(t, "newsletter", 1) for t in sorted(rng.uniform(DAY + 9 * HOUR, DAY + 9 * HOUR + 600) for _ in range(5_000))]
    write("idle-burst.csv", rows)


def business_hours(rng):
    """14 days of an app sending about 100 messages an hour from 8:00 to 18:00
    on weekdays, nothing at night or at weekends; day 10 bursts 10x."""
    rows = []
    for day in range(14):
        if day % 7 in (5, 6):
            continue
        per_hour = 1_000 if day == 9 else 100
        start = day * DAY + 8 * HOUR
        rows += [(t, "billing", 1 + (rng.random() < 0.1)) for t in poisson_times(rng, start, start + 10 * HOUR, per_hour)]
        rows += [(t, "auth", 1) for t in poisson_times(rng, start, start + 10 * HOUR, 10)]
    write("business-hours.csv", rows)


def steady_growth(rng):
    """A new app whose volume triples every day (faster than a 2x/day warm-up
    allows) up to 200 an hour, then stays there: the ceiling follows the
    warm-up curve until it catches up."""
    rows = []
    for day in range(8):
        per_hour = min(5 * 3 ** day, 200)
        rows += [(t, "signup", 1) for t in poisson_times(rng, day * DAY, (day + 1) * DAY, per_hour)]
    write("steady-growth.csv", rows)


def new_gateway_burst(rng):
    """The seed's case: an app on a gateway with no history sends 1,000
    messages at once (within a minute, one connection each, as an app
    does), and nothing else."""
    rows = [(t, "reports", 1) for t in sorted(rng.uniform(0, 60) for _ in range(1_000))]
    write("new-gateway-burst.csv", rows)


def existing_weekday(rng, start, rows):
    """One working day of the gateway in front of which smtp-shaper is put:
    a billing app in business hours, a morning report run (bulk) and login
    codes all day."""
    rows += [(t, "billing", 1 + (rng.random() < 0.2)) for t in poisson_times(rng, start + 8 * HOUR, start + 18 * HOUR, 40)]
    rows += [(t, "reports", 1) for t in sorted(rng.uniform(start + 9 * HOUR, start + 9 * HOUR + 120) for _ in range(150))]


def existing_week(rng, start):
    rows = []
    for day in range(7):
        if day < 5:
            existing_weekday(rng, start + day * DAY, rows)
        rows += [(t, "auth", 1) for t in poisson_times(rng, start + day * DAY, start + (day + 1) * DAY, 6)]
    rows.sort()
    return rows


def existing_gateway_log(rng, monday, path):
    """The week from `monday` (Unix seconds) of a gateway that already sends
    (about 700 a working day, 150 of them in a two-minute report run), as
    its own Postfix log: rsyslog's RFC 3339 timestamps, gzip, a content
    filter hop, deferrals and bounces."""
    import gzip
    week = existing_week(rng, monday)
    lines = []
    queue_ids = iter(rng.sample(range(16 ** 9, 16 ** 10), 3 * len(week)))
    def stamp(t):
        import datetime
        return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")
    def sent(t, qid, to, status="sent", reply="250 2.0.0 OK"):
        domain = to.split("@")[1]
        return (t, f"{stamp(t)} gw1 postfix/smtp[{rng.randint(2000, 9000)}]: {qid}: to=<{to}>, relay=mx.{domain}[192.0.2.{rng.randint(1, 250)}]:25, delay=0.5, delays=0.1/0/0.2/0.2, dsn={'2.0.0' if status == 'sent' else '4.7.0' if status == 'deferred' else '5.1.1'}, status={status} ({reply})")
    for t, app, recipients in week:
        qid = f"{next(queue_ids):X}"
        lines.append((t, f"{stamp(t)} gw1 postfix/smtpd[1201]: {qid}: client=app.example.com[10.0.0.5]"))
        lines.append((t + 0.01, f"{stamp(t + 0.01)} gw1 postfix/qmgr[812]: {qid}: from=<{app}@{app}.example.com>, size=2412, nrcpt={recipients} (queue active)"))
        at = t + 0.3
        if app == "reports":
            # Through the content filter on loopback, re-injected as a new queue id.
            filtered = f"{next(queue_ids):X}"
            lines.append((at, f"{stamp(at)} gw1 postfix/smtp[3011]: {qid}: to=<r{rng.randint(1, 999)}@customer.example.net>, relay=127.0.0.1[127.0.0.1]:10024, delay=0.3, delays=0.1/0/0/0.2, dsn=2.0.0, status=sent (250 2.0.0 Ok, id=1, queued_as {filtered})"))
            qid, at = filtered, at + 0.4
        for index in range(recipients):
            to = f"user{rng.randint(1, 99999)}@{rng.choice(['gmail.com', 'outlook.com', 'example.org', 'yahoo.com'])}"
            roll = rng.random()
            if roll < 0.03:
                lines.append(sent(at, qid, to, "deferred", "451 4.7.0 try again later"))
                lines.append(sent(at + 600 + index, qid, to))
            elif roll < 0.04:
                lines.append(sent(at, qid, to, "bounced", "550 5.1.1 no such user"))
            else:
                lines.append(sent(at + index * 0.1, qid, to))
        lines.append((at + 700, f"{stamp(at + 700)} gw1 postfix/qmgr[812]: {qid}: removed"))
    lines.sort()
    with gzip.GzipFile(path, "wb", mtime=0) as out:
        out.write("".join(line + "\n" for _, line in lines).encode())


def new_receiver(rng):
    """A gateway busy with one receiver meets a new one: a week of about
    1,100 messages a working day to the organisation's own domain (hosted
    at Microsoft 365, as new-receiver.mx.csv says) and a few partners,
    then an HR app mails 1,000 candidates at gmail.com in ten minutes on
    the second Monday. Rows name the recipients' domain."""
    rows = []
    for day in range(8):
        if day % 7 in (5, 6):
            continue
        start = day * DAY + 8 * HOUR
        for t in poisson_times(rng, start, start + 10 * HOUR, 110):
            domain = "example.com" if rng.random() < 0.9 else "partner.example"
            rows.append((t, "billing", 1, domain))
    hr = 7 * DAY + 10 * HOUR
    rows += [(t, "hr", 1, "gmail.com") for t in sorted(rng.uniform(hr, hr + 600) for _ in range(1_000))]
    rows.sort()
    with open("new-receiver.csv", "w") as out:
        out.write("timestamp,app,recipients,domain\n")
        for t, app, recipients, domain in rows:
            out.write(f"{t:.1f},{app},{recipients},{domain}\n")
    with open("new-receiver.mx.csv", "w") as out:
        out.write("domain,mx\nexample.com,example-com.mail.protection.outlook.com\n")


def existing_gateway(rng):
    """The week before smtp-shaper (Monday 2026-11-30 00:00 UTC on) as the
    gateway's log, and the first week through smtp-shaper, as a trace
    (seconds from Monday 00:00)."""
    existing_gateway_log(rng, 1_795_996_800, "existing-gateway.maillog.gz")
    write("existing-gateway.csv", existing_week(rng, 0))


if __name__ == "__main__":
    import sys, time
    if sys.argv[1:2] == ["--last-week"]:
        # The same log as existing-gateway.maillog.gz, moved to the seven
        # days before today (UTC), written where asked: a recent history for
        # `smtp-shaper learn` whatever the date.
        today = int(time.time()) // DAY * DAY
        existing_gateway_log(random.Random(5), today - 7 * DAY, sys.argv[2])
        sys.exit(0)
    idle_burst(random.Random(1))
    business_hours(random.Random(2))
    steady_growth(random.Random(3))
    new_gateway_burst(random.Random(4))
    existing_gateway(random.Random(5))
    new_receiver(random.Random(6))
