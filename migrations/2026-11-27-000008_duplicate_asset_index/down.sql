CREATE INDEX assets_tenant_customer_idx ON assets (tenant_id, customer_id, id);
