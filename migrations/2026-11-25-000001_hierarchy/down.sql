DROP TABLE devices;
DROP TABLE assets;
DROP TABLE customers;
