"""The subject scheme of the event stream.

Every event is published on a subject that names where it belongs, so subscribers filter on the
server and NATS permissions can confine a subscriber to one organization:

    <prefix>.<org>.execution.<botId>.<executionId>.<EventName>
    <prefix>.<org>.bot.<botId>.<EventName>
    <prefix>.<org>.apikey.<keyId>.<EventName>

With the default prefix ``botledger``, ``botledger.acme.execution.<botId>.*.ExecutionFailed``
selects every failure of one bot, and ``botledger.acme.>`` everything of organization ``acme``.
"""

from __future__ import annotations

import re

from events.errors import ValidationError

ORG_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
# Tokens may not contain NATS wildcards, separators or white space.
_TOKEN_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def check_org_id(org_id: str) -> str:
    if not ORG_ID_PATTERN.match(org_id):
        raise ValidationError(
            f"Invalid organization id {org_id!r}: use 1 to 63 lowercase letters, digits, '-' or "
            "'_', starting with a letter or digit.",
            {"orgId": org_id},
        )
    return org_id


def _token(value: str, what: str) -> str:
    if not _TOKEN_PATTERN.match(value):
        raise ValidationError(
            f"Invalid {what} {value!r} for a subject token: use letters, digits, '-' or '_'.",
            {what: value},
        )
    return value


class SubjectScheme:
    """Builds the subjects of the stream for one subject prefix."""

    def __init__(self, prefix: str = "botledger") -> None:
        self.prefix = _token(prefix, "subject prefix")

    @property
    def all(self) -> str:
        return f"{self.prefix}.>"

    def organization(self, org_id: str) -> str:
        return f"{self.prefix}.{check_org_id(org_id)}.>"

    def aggregate_filter(
        self, aggregate_type: str, aggregate_id: str, org_id: str | None, bot_id: str | None = None
    ) -> str:
        """Build the filter matching every event of one aggregate, with wildcards for unknown ids."""
        org = check_org_id(org_id) if org_id else "*"
        aggregate = _token(aggregate_id, "aggregate id")
        if aggregate_type == "execution":
            bot = _token(bot_id, "bot id") if bot_id else "*"
            return f"{self.prefix}.{org}.execution.{bot}.{aggregate}.*"
        return f"{self.prefix}.{org}.{_token(aggregate_type, 'aggregate type')}.{aggregate}.*"

    def event_subject(
        self,
        aggregate_type: str,
        aggregate_id: str,
        org_id: str,
        event_name: str,
        bot_id: str | None = None,
    ) -> str:
        base = self.aggregate_filter(aggregate_type, aggregate_id, org_id, bot_id)
        if "*" in base[:-1]:
            raise ValidationError(
                f"Cannot publish an {aggregate_type} event without its organization and bot ids."
            )
        return base[:-1] + _token(event_name, "event name")

    def executions(
        self, org_id: str | None = None, bot_id: str | None = None, event_name: str | None = None
    ) -> str:
        """Build a filter over executions, narrowed by organization, bot and event name if given."""
        org = check_org_id(org_id) if org_id else "*"
        bot = _token(bot_id, "bot id") if bot_id else "*"
        name = _token(event_name, "event name") if event_name else "*"
        return f"{self.prefix}.{org}.execution.{bot}.*.{name}"

    def parse(self, subject: str) -> dict[str, str]:
        """Split a stored subject into orgId, aggregateType, botId, aggregateId and event."""
        tokens = subject.split(".")
        if len(tokens) == 6 and tokens[2] == "execution":
            return {
                "orgId": tokens[1],
                "aggregateType": "execution",
                "botId": tokens[3],
                "aggregateId": tokens[4],
                "event": tokens[5],
            }
        if len(tokens) == 5:
            return {
                "orgId": tokens[1],
                "aggregateType": tokens[2],
                "aggregateId": tokens[3],
                "event": tokens[4],
            }
        raise ValidationError(f"Subject {subject!r} does not follow the botledger scheme.")
