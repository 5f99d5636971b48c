-- Issue 15: icebergs and good-till-date on the order rows; API key scopes.
ALTER TABLE orders ADD COLUMN IF NOT EXISTS display_quantity bigint;  -- iceberg (lots), NULL otherwise
ALTER TABLE orders ADD COLUMN IF NOT EXISTS expire_ts bigint;         -- GTD (ns since epoch), NULL otherwise

-- Scopes: read (own orders, fills, positions, the orders channel), trade (read + place,
-- cancel, amend), admin. Existing keys keep what they could do: 'trader' becomes 'trade'.
-- 'trader' stays accepted as a synonym of 'trade' for scripts that still insert it.
ALTER TABLE api_keys DROP CONSTRAINT IF EXISTS api_keys_kind_check;
UPDATE api_keys SET kind = 'trade' WHERE kind = 'trader';
ALTER TABLE api_keys ADD CONSTRAINT api_keys_kind_check CHECK (kind IN ('read', 'trade', 'trader', 'admin'));
