"""`python -m bench.campaign_tick`: what a scheduler tick costs with a large cron campaign, as figures.

In the PostgreSQL database named by TEST_PG_DATABASE (default oaksend_test; it is emptied),
a cron campaign of N recipients (default 100,000) is created; then, with a clock handed in:

1. ticks with nothing due (the next occurrence beyond the horizon): median and max of 20;
2. the tick that materializes one occurrence for every recipient (goal: well within the
   scheduler's 15 s lock).

It asserts no speed; it prints the figures.

    TEST_PG_DATABASE=... TEST_REDIS_URL=... python -m bench.campaign_tick [--recipients N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import UTC, datetime, timedelta

from oaksend.migrations.runner import upgrade
from oaksend.models.db import make_engine
from oaksend.models.repository import Outbox
from oaksend.worker.campaigns.audience import AudienceSpec
from oaksend.worker.campaigns.schedule import parse_schedule
from oaksend.worker.campaigns.service import Campaigns, CampaignSpec
from oaksend.worker.settings import Settings
from tests.support import CHATBOT, REDIS_URL, ensure_pg_database, reset_pg

T0 = datetime(2030, 1, 7, 0, 20, tzinfo=UTC)  # a Monday, 00:20; the cron fires on Mondays at 09:00


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipients", type=int, default=100_000)
    args = parser.parse_args()
    url = ensure_pg_database()
    reset_pg(url)
    upgrade(url)
    now = [T0]
    settings = Settings(database_url=url, redis_url=REDIS_URL, _env_file=None)  # type: ignore[call-arg]
    outbox = Outbox(make_engine(url))
    campaigns = Campaigns(settings, outbox=outbox, clock=lambda: now[0])
    spec = CampaignSpec(name="weekly", chatbot=CHATBOT, template="Weekly note for {first_name}",
                        schedule=parse_schedule(cron="0 9 * * MON"), tz="UTC", quiet_hours="off",
                        audience=AudienceSpec(key_column="booking"))
    areas = ("212", "415", "312", "617", "303", "206", "404", "512", "305", "702", "503", "615")
    rows = [{"booking": f"b{i}", "phone": f"+1{areas[i // 10_000]}555{i % 10_000:04d}", "first_name": f"P{i}"}
            for i in range(args.recipients)]
    started = time.perf_counter()
    result = campaigns.create(spec, rows)
    print(f"created campaign {result.id}: {result.recipients} recipients in {time.perf_counter() - started:.1f} s")
    campaigns.tick()  # stores the next fire time
    idle = []
    for i in range(20):
        now[0] = T0 + timedelta(seconds=5 * i)
        started = time.perf_counter()
        stats = campaigns.tick()
        idle.append(time.perf_counter() - started)
        assert stats == {}, stats
    print(f"tick, nothing due, {args.recipients} cron recipients: median {statistics.median(idle) * 1000:.1f} ms, "
          f"max {max(idle) * 1000:.1f} ms")
    now[0] = T0 + timedelta(hours=3)  # 09:00 is within the 6 h horizon
    started = time.perf_counter()
    stats = campaigns.tick()
    print(f"tick materializing one occurrence: {stats.get('messages', 0)} messages in "
          f"{time.perf_counter() - started:.1f} s")
    campaigns.close()


if __name__ == "__main__":
    main()
