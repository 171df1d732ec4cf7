-- Each worker's report also carries its lag per partition (the broker's high
-- watermark minus the durable offset), so readers that do not talk to Kafka
-- (the gateway's live page, dashboards over SQL) can show it.
ALTER TABLE worker_status ADD COLUMN lag jsonb NOT NULL DEFAULT '{}';
