#!/usr/bin/env python3
"""Writes the sample traces for `smtp-shaper simulate` (deterministic: seeded).

Each row is one message: seconds since the trace start, the app that sent it,
its number of recipients. Run from this folder: python3 generate.py
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


if __name__ == "__main__":
    idle_burst(random.Random(1))
    business_hours(random.Random(2))
    steady_growth(random.Random(3))
    new_gateway_burst(random.Random(4))
