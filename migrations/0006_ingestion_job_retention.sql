-- retention --days N prunes ingestion jobs last updated before the cutoff (and
-- their per-event rows): this index lets each batch find them without a scan.
CREATE INDEX ingestion_jobs_updated_at ON ingestion_jobs (updated_at);
