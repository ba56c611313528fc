-- graydar controller schema, version 8 (PostgreSQL): when the agent made
-- each fault state change, on its own clock (ms since the Unix epoch), as it
-- reported it; NULL until it reports, and from agents that do not say.
-- `updated_ms` stays the controller's time of the report.

ALTER TABLE fault_agents ADD COLUMN agent_at_ms BIGINT;
