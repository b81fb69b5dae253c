DROP TABLE partner_webhooks;
DROP TABLE partner_oauth_clients;
DROP TABLE partner_api_keys;
DROP TABLE partners;
