-- Keep each event's "late" flag in the raw tables, so rollups can be rebuilt
-- from the raw tables alone (python -m pipeline rebuild-rollups).
ALTER TABLE raw_events ADD COLUMN late boolean NOT NULL DEFAULT false;
ALTER TABLE raw_agent_events ADD COLUMN late boolean NOT NULL DEFAULT false;
