DROP TABLE role_assignments;
DROP TABLE role_policies;
DROP TABLE roles;
DROP TABLE policies;
