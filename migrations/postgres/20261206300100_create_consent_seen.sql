-- consent_seen: what real sync runs saw in the member DB's consent column, per audience and
-- member, kept as evidence for a re-consent after an opt-out (a row's updated_at is not: any
-- profile edit moves it). A row exists once a sync has seen the member's consent withheld:
-- `consent` and `seen_at` are the value last recorded and when it was read; `withheld_at` is the
-- latest time a sync saw the column withheld, moved forward when an opt-out is newer than it.
-- Evidence for a re-consent = withheld_at later than the opt-out, and the row now says consent
-- given. Dry runs never write here. Timestamps are RFC 3339 UTC text on both backends.
CREATE TABLE consent_seen (
    audience    TEXT NOT NULL,
    member_key  TEXT NOT NULL,
    consent     TEXT NOT NULL CHECK (consent IN ('given', 'withheld')),
    seen_at     TEXT NOT NULL,
    withheld_at TEXT NOT NULL,
    PRIMARY KEY (audience, member_key)
);
