-- `python -m pipeline dlq replay`: a dead letter is marked replayed only after the broker
-- acknowledged its publish to the events topic. A second replay skips it (unless --again);
-- even a repeated publish stores the event once, since its key is the event's dedup key.
ALTER TABLE dead_letters
    ADD COLUMN replayed_at  timestamptz,          -- the last acknowledged replay
    ADD COLUMN replayed_to  text,                 -- where it went: topic/partition/offset
    ADD COLUMN replay_count integer NOT NULL DEFAULT 0,
    ADD COLUMN replay_fixes text;                 -- the --set/--unset of the last replay

-- dlq list --since/--until and retention filter on arrival time.
CREATE INDEX dead_letters_received_at ON dead_letters (received_at);
