"""Campaign specs for tests: a campaign live now (started a second ago, ending in an hour)."""

from __future__ import annotations

import time
from typing import Any

from adcache.campaigns import CampaignSpec
from adcache.targeting import Targeting


def live_spec(targeting: Targeting, **kw: Any) -> CampaignSpec:
    """A live campaign in `targeting`: advertiser "adv", bid 1.00 CPM, budget 1.00 unless given."""
    now = int(time.time() * 1000)
    base: dict[str, Any] = {
        "advertiser_id": "adv",
        "bid_cpm_micros": 1_000_000,
        "budget_micros": 1_000_000,
        "start_ms": now - 1000,
        "end_ms": now + 3_600_000,
        "targeting": targeting,
    }
    return CampaignSpec(**{**base, **kw})
