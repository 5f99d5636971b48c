-- Retention (issue 18): expired idempotency rows are deleted by created_at in small batches
-- (command_service/housekeeping.py); without this index each batch would scan the table.
CREATE INDEX IF NOT EXISTS idempotency_created ON idempotency (created_at);
