-- assets_tenant_customer_idx had the very columns of the assets_tenant_customer_id_key
-- constraint's unique index, which serves every lookup it did: one index fewer to
-- update on each asset write.
DROP INDEX assets_tenant_customer_idx;
