"""Profiles rendered where they are served: from each member's state on the member table's
changelog, with the rule pack the worker runs.

The worker writes one changelog record per changed member per batch, after the batch's tag
changes are delivered. Rendering the profile there, and producing it as a record of its own,
cost the worker about 70 µs of every event's ~225 (100,000 members, `tagstream bench`, runs
A1/A2 against B1/B2 in docs/performance-log.md), all on the one core the worker has; here it
runs on the sink's, and only for the newest state of a member in each sink batch.

The rule pack decides how a held tag is shown (its name, family, the lifecycle and RFM
groups, tiers and points): the sink loads the same rule file as the worker and follows its
changes the same way (streams/platform/rules_watch.py), so a profile is rendered with the
rules its state was made with, give or take one reload interval.
"""

from __future__ import annotations

from schemas.profile import encode_profile
from streams.serving.redis_store import ServedProfile
from taggers.profile import render_profile
from taggers.rules import RulePack
from taggers.state import decode_state


class ProfileRenderer:
    def __init__(self, pack: RulePack) -> None:
        self.pack = pack

    def use_rules(self, pack: RulePack) -> None:
        self.pack = pack

    def served(self, raw_state: bytes) -> ServedProfile:
        """The served profile of an encoded member state (a changelog record's value).
        Raises ValueError for a record that is not a member state."""
        state = decode_state(raw_state)
        profile = render_profile(state, self.pack)
        return ServedProfile.joined(
            state.member_id, -1 if state.watermark is None else state.watermark * 1000,
            encode_profile(profile), {tag.id for tag in profile.tags},
            {guide.userid for guide in profile.guides if guide.userid},
            {guide.external_userid for guide in profile.guides if guide.external_userid})
